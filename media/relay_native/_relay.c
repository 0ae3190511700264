/* The fast packet path of the media relay: one Relay per stream component owns the UDP
 * sockets of its two sides (A: the Microsoft/ICE side, B: the video side); a Hub polls many
 * relays with one epoll set, receives in batches (recvmmsg), applies the published plan
 * (direction, latching, SRTP through the system libsrtp2, SSRC mapping) in place in a
 * per-hub buffer ring, and sends in batches (sendmmsg). No Python frame and no allocation per
 * packet; STUN (first byte 0-3) goes up to Python through the relay's on_stun callback.
 *
 * media/relay_py.py is the pure-Python twin and the oracle of the tests: every rule here has
 * its line there, and `feed` runs the same per-packet function as the pump, without sockets.
 *
 * Hand-written (no Cython) to keep the build to gcc + libsrtp2-dev + Python headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <srtp2/srtp.h>

#define BATCH 64
#define BUF_SIZE 2048
#define MAX_IN (BUF_SIZE - 64)  /* room for the SRTP(C) trailer added by protect */
#define MAX_MKI 16
#define MAP_CAP 1024
#define AUTH_TAG 10
#define LAT_BUCKETS 20000
/* pylibsrtp (the portable path) works in a 1500-byte buffer and reserves its largest trailer
 * (144 bytes SRTP, 148 SRTCP) before protecting: both paths refuse the same sizes */
#define SRTP_BUF 1500
#define SRTP_TRAILER 144
#define SRTCP_TRAILER 148       /* 1 us buckets up to 20 ms, then one overflow bucket */

enum { SIDE_A = 0, SIDE_B = 1 };
enum { MODE_FIXED = 0, MODE_STRICT = 1, MODE_NAT = 2 };
enum {
    V_FORWARD = 0, V_STUN = 1, V_DIRECTION = 2, V_SOURCE = 3, V_NO_ROUTE = 4, V_SRTP = 5,
    V_MALFORMED = 6, V_SEND = 7, V_COUNT = 8
};

typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
    int valid;
} addr_t;

typedef struct {
    /* the plan's rules for this side */
    int mode;
    addr_t sdp;
    int64_t relatch_after_ns;
    srtp_t rx, tx;
    PyObject *rx_owner, *tx_owner;  /* set: an external session (see set_external_srtp) */
    uint8_t rx_key[46], tx_key[46];
    int rx_key_len, tx_key_len;
    uint8_t mki[MAX_MKI];
    int mki_len;
    /* latch state (mutable, owned by the packet path) */
    addr_t latched;
    int64_t last_heard;
    uint64_t relatches;
    int latch_changed;   /* on_latch is due (called after the packet, outside process) */
    /* counters for packets received on this side, and sent from it */
    uint64_t in_packets, in_bytes, out_packets, out_bytes;
    uint64_t verdicts[V_COUNT];
    int fd;
} side_t;

typedef struct {
    uint32_t from, to;
} map_entry_t;

typedef struct RelayObject {
    PyObject_HEAD
    side_t side[2];
    int fwd[2];          /* RTP allowed from side i to the other */
    int rtcp_live;
    int has_map;
    uint32_t map_first, map_last, map_next;
    map_entry_t *map;    /* FIFO ring, oldest at map_head */
    int map_len, map_cap, map_head;
    PyObject *on_stun;
    PyObject *on_latch;
    PyObject *hub;       /* borrowed while registered */
    struct { struct RelayObject *relay; int side; } tags[2];
} RelayObject;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int addr_eq(const addr_t *a, const struct sockaddr_storage *ss) {
    if (!a->valid || a->ss.ss_family != ss->ss_family) return 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)ss;
    return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
}

static int host_eq(const addr_t *a, const struct sockaddr_storage *ss) {
    if (!a->valid || a->ss.ss_family != ss->ss_family) return 0;
    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr
               == ((const struct sockaddr_in *)ss)->sin_addr.s_addr;
    return !memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr,
                   &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
}

static int addr_from_py(PyObject *obj, addr_t *out) {
    memset(out, 0, sizeof(*out));
    if (obj == Py_None) return 0;
    const char *host;
    int port;
    if (!PyArg_ParseTuple(obj, "si", &host, &port)) return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    struct sockaddr_in *v4 = (void *)&out->ss;
    struct sockaddr_in6 *v6 = (void *)&out->ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        out->len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*v6);
    } else {
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
        return -1;
    }
    out->valid = 1;
    return 0;
}

static PyObject *addr_to_py(const struct sockaddr_storage *ss) {
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const void *)ss;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(v4->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const void *)ss;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(v6->sin6_port));
    }
    Py_RETURN_NONE;
}

/* -- SSRC mapping (media.ssrc.SsrcMapper's rule, table capped at MAP_CAP) ---------------- */

static uint32_t map_ssrc(RelayObject *r, uint32_t original) {
    for (int i = 0; i < r->map_len; i++) {
        map_entry_t *e = &r->map[(r->map_head + i) % r->map_cap];
        if (e->from == original) return e->to;
    }
    uint32_t mapped;
    if (r->map_len == r->map_cap) {      /* full: reuse the oldest entry's SSRC */
        map_entry_t *old = &r->map[r->map_head];
        mapped = old->to;
        r->map_head = (r->map_head + 1) % r->map_cap;
        r->map_len--;
    } else {
        uint64_t size = (uint64_t)r->map_last - r->map_first + 1;
        mapped = r->map_next;
        r->map_next = (uint32_t)(r->map_first + ((uint64_t)r->map_next - r->map_first + 1) % size);
    }
    map_entry_t *slot = &r->map[(r->map_head + r->map_len) % r->map_cap];
    slot->from = original;
    slot->to = mapped;
    r->map_len++;
    return mapped;
}

static uint32_t unmap_ssrc(RelayObject *r, uint32_t mapped) {
    for (int i = 0; i < r->map_len; i++) {
        map_entry_t *e = &r->map[(r->map_head + i) % r->map_cap];
        if (e->to == mapped) return e->from;
    }
    return mapped;
}

static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

enum { F_SAME = 0, F_MAP = 1, F_UNMAP = 2 };

static inline void swap_at(RelayObject *r, uint8_t *p, int fn) {
    if (fn == F_MAP) wr32(p, map_ssrc(r, rd32(p)));
    else if (fn == F_UNMAP) wr32(p, unmap_ssrc(r, rd32(p)));
}

/* media.ssrc.rewrite_rtcp, in place */
static void rewrite_rtcp(RelayObject *r, uint8_t *pkt, int end, int sender, int about) {
    int offset = 0;
    while (offset + 8 <= end) {
        uint8_t first = pkt[offset], ptype = pkt[offset + 1];
        int size = ((pkt[offset + 2] << 8 | pkt[offset + 3]) + 1) * 4;
        if (first >> 6 != 2 || offset + size > end) break;
        int count = first & 0x1f;
        if (ptype == 200 || ptype == 201) {
            swap_at(r, pkt + offset + 4, sender);
            int blocks = offset + (ptype == 200 ? 28 : 8);
            for (int i = 0; i < count; i++) {
                int at = blocks + 24 * i;
                if (at + 24 > offset + size) break;
                swap_at(r, pkt + at, about);
            }
        } else if (ptype == 203) {
            for (int i = 0; i < count; i++) {
                int at = offset + 4 + 4 * i;
                if (at + 4 > offset + size) break;
                swap_at(r, pkt + at, sender);
            }
        } else if (ptype == 202) {
            if (count) swap_at(r, pkt + offset + 4, sender);
        } else if (ptype == 204 || ptype == 205 || ptype == 206) {
            swap_at(r, pkt + offset + 4, sender);
            if (ptype != 204 && size >= 12) swap_at(r, pkt + offset + 8, about);
        }
        offset += size;
    }
}

/* -- SRTP: the system libsrtp2, or an external libsrtp build's sessions ------------------
 * Debian's libsrtp2 does its crypto through NSS, which costs several microseconds per packet
 * (per-packet PK11 context operations and locks: see bench/relay_fast.py's profile note);
 * pylibsrtp's wheel carries a libsrtp built on OpenSSL. Its functions are reachable through
 * cffi (ffi.addressof), so media.relay_native can hand us their addresses and sessions made
 * by pylibsrtp; each session is then run by the library that made it. */

typedef srtp_err_status_t (*srtp_fn)(srtp_t, void *, int *);
static srtp_fn ext_fn[4];   /* protect, unprotect, protect_rtcp, unprotect_rtcp */

static inline srtp_err_status_t run_srtp(srtp_t ctx, int external, int which, uint8_t *buf,
                                         int *len) {
    if (external) return ext_fn[which](ctx, buf, len);
    switch (which) {
    case 0: return srtp_protect(ctx, buf, len);
    case 1: return srtp_unprotect(ctx, buf, len);
    case 2: return srtp_protect_rtcp(ctx, buf, len);
    default: return srtp_unprotect_rtcp(ctx, buf, len);
    }
}

static PyObject *set_external_srtp(PyObject *mod, PyObject *args) {
    unsigned long long a[4];
    if (!PyArg_ParseTuple(args, "KKKK", &a[0], &a[1], &a[2], &a[3])) return NULL;
    for (int i = 0; i < 4; i++) ext_fn[i] = (srtp_fn)(uintptr_t)a[i];
    Py_RETURN_NONE;
}

/* -- the per-packet path ----------------------------------------------------------------- */

static inline int is_rtcp(const uint8_t *p) {  /* RFC 5761 §4: PT 64-95 with marker */
    return p[1] >= 192 && p[1] <= 223;
}

/* Applies the plan to one packet received on side `s` from `src`, in place in `buf` (at
 * least BUF_SIZE bytes). Returns the verdict; for V_FORWARD, *len is the length to send and
 * *dest the target on the other side. */
static int process(RelayObject *r, int s, uint8_t *buf, int *len,
                   const struct sockaddr_storage *src, int64_t now, const addr_t **dest) {
    side_t *in = &r->side[s], *out = &r->side[!s];
    int n = *len;
    in->in_packets++;
    in->in_bytes += (uint64_t)n;
    if (n > 0 && buf[0] < 4) return V_STUN;
    if (n > MAX_IN || n < 8 || buf[0] >> 6 != 2) return V_MALFORMED;
    int rtcp = is_rtcp(buf);
    if (!rtcp && n < 12) return V_MALFORMED;
    /* latching (reliab-media's Latch.accept) */
    if (in->mode != MODE_FIXED) {
        if (!addr_eq(&in->latched, src)) {
            int exact = in->mode == MODE_STRICT && addr_eq(&in->sdp, src);
            if (in->latched.valid && !exact && now - in->last_heard < in->relatch_after_ns)
                return V_SOURCE;
            if (in->mode == MODE_STRICT && !host_eq(&in->sdp, src)) return V_SOURCE;
            if (in->latched.valid) in->relatches++;
            memcpy(&in->latched.ss, src, sizeof(*src));
            in->latched.len = src->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                        : sizeof(struct sockaddr_in6);
            in->latched.valid = 1;
            in->latch_changed = 1;
        }
        in->last_heard = now;
    }
    if (!(rtcp ? r->rtcp_live : r->fwd[s])) return V_DIRECTION;
    if (in->rx) {
        if (n > SRTP_BUF) return V_SRTP;
        if (in->mki_len) {
            if (n < 12 + in->mki_len + AUTH_TAG) return V_SRTP;
            int at = n - AUTH_TAG - in->mki_len;
            if (memcmp(buf + at, in->mki, in->mki_len)) return V_SRTP;
            memmove(buf + at, buf + at + in->mki_len, AUTH_TAG);
            n -= in->mki_len;
        }
        srtp_err_status_t st = run_srtp(in->rx, in->rx_owner != NULL, rtcp ? 3 : 1, buf, &n);
        if (st != srtp_err_status_ok) return V_SRTP;
    }
    if (r->has_map) {
        if (s == SIDE_B) {
            if (rtcp) rewrite_rtcp(r, buf, n, F_MAP, F_UNMAP);
            else if (n >= 12) swap_at(r, buf + 8, F_MAP);
        } else if (rtcp) {
            rewrite_rtcp(r, buf, n, F_SAME, F_UNMAP);
        }
    }
    if (out->tx) {
        if (n + (rtcp ? SRTCP_TRAILER : SRTP_TRAILER) > SRTP_BUF) return V_SRTP;
        srtp_err_status_t st = run_srtp(out->tx, out->tx_owner != NULL, rtcp ? 2 : 0, buf, &n);
        if (st != srtp_err_status_ok) return V_SRTP;
    }
    const addr_t *target = out->mode != MODE_FIXED && out->latched.valid ? &out->latched
                                                                       : &out->sdp;
    if (!target->valid) return V_NO_ROUTE;
    *dest = target;
    *len = n;
    return V_FORWARD;
}

/* -- Relay ------------------------------------------------------------------------------- */

static void drop_session(srtp_t *ctx, PyObject **owner) {
    if (*owner) Py_CLEAR(*owner);   /* the external library frees its own session */
    else if (*ctx) srtp_dealloc(*ctx);
    *ctx = NULL;
}

static void side_free_srtp(side_t *s) {
    drop_session(&s->rx, &s->rx_owner);
    drop_session(&s->tx, &s->tx_owner);
    s->rx_key_len = s->tx_key_len = 0;
}

static int make_session(srtp_t *ctx, const uint8_t *key, int inbound) {
    srtp_policy_t policy;
    memset(&policy, 0, sizeof(policy));
    srtp_crypto_policy_set_rtp_default(&policy.rtp);
    srtp_crypto_policy_set_rtcp_default(&policy.rtcp);
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    policy.key = (unsigned char *)key;
    /* window_size 0 (libsrtp's default, 128) and no repeated tx: pylibsrtp's defaults, so
     * both paths judge replays alike */
    if (srtp_create(ctx, &policy) != srtp_err_status_ok) {
        *ctx = NULL;
        PyErr_SetString(PyExc_ValueError, "libsrtp refused the key");
        return -1;
    }
    return 0;
}

/* `key`: None; 30 bytes of key + salt (a system libsrtp2 session, kept while the key is); or
 * (owner, address) of an external session (kept while it is the same one). */
static int set_key(srtp_t *ctx, PyObject **owner, uint8_t *stored, int *stored_len,
                   PyObject *key, int inbound) {
    if (key == Py_None) {
        drop_session(ctx, owner);
        *stored_len = 0;
        return 0;
    }
    if (PyTuple_Check(key)) {
        PyObject *who;
        unsigned long long address;
        if (!PyArg_ParseTuple(key, "OK", &who, &address)) return -1;
        if (!ext_fn[0]) {
            PyErr_SetString(PyExc_ValueError, "external SRTP session without set_external_srtp");
            return -1;
        }
        if (*owner && *ctx == (srtp_t)(uintptr_t)address) return 0;
        drop_session(ctx, owner);
        Py_INCREF(who);
        *owner = who;
        *ctx = (srtp_t)(uintptr_t)address;
        *stored_len = 0;
        return 0;
    }
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(key, &data, &len) < 0) return -1;
    if (len != 30) {
        PyErr_SetString(PyExc_ValueError, "SRTP key must be 30 bytes (AES_CM_128 key + salt)");
        return -1;
    }
    if (*ctx && !*owner && *stored_len == len && !memcmp(stored, data, len)) return 0;
    drop_session(ctx, owner);
    memcpy(stored, data, len);
    *stored_len = (int)len;
    return make_session(ctx, stored, inbound);
}

static int publish_side(side_t *s, PyObject *t) {
    int mode;
    PyObject *sdp, *rx_key, *tx_key;
    long long relatch_ns;
    const char *mki;
    Py_ssize_t mki_len;
    if (!PyArg_ParseTuple(t, "iOLOy#O", &mode, &sdp, &relatch_ns, &rx_key, &mki, &mki_len,
                          &tx_key))
        return -1;
    if (mode < MODE_FIXED || mode > MODE_NAT || mki_len > MAX_MKI) {
        PyErr_SetString(PyExc_ValueError, "bad latch mode or MKI");
        return -1;
    }
    addr_t addr;
    if (addr_from_py(sdp, &addr) < 0) return -1;
    if (set_key(&s->rx, &s->rx_owner, s->rx_key, &s->rx_key_len, rx_key, 1) < 0) return -1;
    if (set_key(&s->tx, &s->tx_owner, s->tx_key, &s->tx_key_len, tx_key, 0) < 0) return -1;
    int same = addr.valid == s->sdp.valid && (!addr.valid || addr_eq(&s->sdp, &addr.ss));
    if (!same) {     /* a new SDP address starts latching over */
        s->sdp = addr;
        s->latched.valid = 0;
    }
    s->mode = mode;
    s->relatch_after_ns = relatch_ns;
    memcpy(s->mki, mki, mki_len);
    s->mki_len = (int)mki_len;
    return 0;
}

static PyObject *Relay_publish(RelayObject *self, PyObject *args) {
    int fwd_ab, fwd_ba, rtcp_live;
    long long map_first, map_last;
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "pppOOLL", &fwd_ab, &fwd_ba, &rtcp_live, &a, &b, &map_first,
                          &map_last))
        return NULL;
    if (publish_side(&self->side[SIDE_A], a) < 0 || publish_side(&self->side[SIDE_B], b) < 0)
        return NULL;
    self->fwd[SIDE_A] = fwd_ab;
    self->fwd[SIDE_B] = fwd_ba;
    self->rtcp_live = rtcp_live;
    if (map_first < 0) {
        self->has_map = 0;
    } else if (!self->has_map || self->map_first != map_first || self->map_last != map_last) {
        if (map_last < map_first || map_last > 0xffffffffLL) {
            PyErr_SetString(PyExc_ValueError, "bad SSRC range");
            return NULL;
        }
        uint64_t size = (uint64_t)(map_last - map_first) + 1;
        int cap = size < MAP_CAP ? (int)size : MAP_CAP;
        map_entry_t *m = PyMem_Realloc(self->map, sizeof(map_entry_t) * cap);
        if (!m) return PyErr_NoMemory();
        self->map = m;
        self->map_cap = cap;
        self->map_len = self->map_head = 0;
        self->map_first = self->map_next = (uint32_t)map_first;
        self->map_last = (uint32_t)map_last;
        self->has_map = 1;
    }
    Py_RETURN_NONE;
}

/* Calls on_latch(side, (host, port)) once a packet latched side `s` to a new source (rare:
 * the first packet, a relatch), outside the per-packet path. */
static void latch_callback(RelayObject *r, int s) {
    side_t *x = &r->side[s];
    if (!x->latch_changed) return;
    x->latch_changed = 0;
    if (!r->on_latch || r->on_latch == Py_None || !x->latched.valid) return;
    PyObject *addr = addr_to_py(&x->latched.ss);
    PyObject *res = addr ? PyObject_CallFunction(r->on_latch, "iN", s, addr) : NULL;
    if (!res) PyErr_WriteUnraisable(r->on_latch);
    Py_XDECREF(res);
}

static PyObject *Relay_feed(RelayObject *self, PyObject *args) {
    int s;
    Py_buffer data;
    PyObject *source;
    long long now;
    if (!PyArg_ParseTuple(args, "iy*OL", &s, &data, &source, &now)) return NULL;
    addr_t src;
    if (s < 0 || s > 1 || addr_from_py(source, &src) < 0 || !src.valid) {
        PyBuffer_Release(&data);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad side or source");
        return NULL;
    }
    uint8_t buf[BUF_SIZE];
    /* the real length (counted, and judged before anything past BUF_SIZE is read) */
    int len = data.len > 0x7fffffff ? 0x7fffffff : (int)data.len;
    memcpy(buf, data.buf, data.len > BUF_SIZE ? BUF_SIZE : data.len);
    PyBuffer_Release(&data);
    const addr_t *dest = NULL;
    int v = process(self, s, buf, &len, &src.ss, now, &dest);
    self->side[s].verdicts[v]++;
    latch_callback(self, s);
    if (v != V_FORWARD) return Py_BuildValue("(iOO)", v, Py_None, Py_None);
    self->side[!s].out_packets++;
    self->side[!s].out_bytes += (uint64_t)len;
    PyObject *d = addr_to_py(&dest->ss);
    if (!d) return NULL;
    return Py_BuildValue("(iy#N)", v, (const char *)buf, (Py_ssize_t)len, d);
}

static PyObject *Relay_sendto(RelayObject *self, PyObject *args) {
    int s;
    Py_buffer data;
    PyObject *dest;
    if (!PyArg_ParseTuple(args, "iy*O", &s, &data, &dest)) return NULL;
    addr_t to;
    if (s < 0 || s > 1 || addr_from_py(dest, &to) < 0 || !to.valid || self->side[s].fd < 0) {
        PyBuffer_Release(&data);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad side, address or closed");
        return NULL;
    }
    ssize_t sent = sendto(self->side[s].fd, data.buf, data.len, MSG_DONTWAIT,
                          (struct sockaddr *)&to.ss, to.len);
    PyBuffer_Release(&data);
    if (sent < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static const char *VERDICT_NAMES[V_COUNT] = {
    "forwarded", "stun", "dropped_direction", "dropped_source", "dropped_no_route",
    "dropped_srtp", "dropped_malformed", "dropped_send"};

static PyObject *Relay_counters(RelayObject *self, PyObject *args) {
    int s;
    if (!PyArg_ParseTuple(args, "i", &s)) return NULL;
    if (s < 0 || s > 1) return PyErr_Format(PyExc_ValueError, "bad side %d", s);
    side_t *x = &self->side[s];
    PyObject *d = Py_BuildValue("{sKsKsKsKsK}", "packets_in", x->in_packets, "bytes_in",
                                x->in_bytes, "packets_out", x->out_packets, "bytes_out",
                                x->out_bytes, "relatches", x->relatches);
    if (!d) return NULL;
    for (int i = 0; i < V_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(x->verdicts[i]);
        if (!v || PyDict_SetItemString(d, VERDICT_NAMES[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *Relay_latched(RelayObject *self, PyObject *args) {
    int s;
    if (!PyArg_ParseTuple(args, "i", &s)) return NULL;
    if (s < 0 || s > 1) return PyErr_Format(PyExc_ValueError, "bad side %d", s);
    if (!self->side[s].latched.valid) Py_RETURN_NONE;
    return addr_to_py(&self->side[s].latched.ss);
}

static PyObject *hub_unregister(PyObject *hub, RelayObject *r);

static void relay_close_fds(RelayObject *self) {
    if (self->hub) hub_unregister(self->hub, self);
    for (int i = 0; i < 2; i++) {
        if (self->side[i].fd >= 0) close(self->side[i].fd);
        self->side[i].fd = -1;
    }
}

static PyObject *Relay_close(RelayObject *self, PyObject *unused) {
    relay_close_fds(self);
    Py_RETURN_NONE;
}

static int Relay_init(RelayObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd_a", "fd_b", NULL};
    int fa = -1, fb = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ii", names, &fa, &fb)) return -1;
    self->side[0].fd = fa;
    self->side[1].fd = fb;
    for (int i = 0; i < 2; i++) {
        self->tags[i].relay = self;
        self->tags[i].side = i;
    }
    return 0;
}

static PyObject *Relay_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    RelayObject *self = (RelayObject *)type->tp_alloc(type, 0);
    if (self) self->side[0].fd = self->side[1].fd = -1;
    return (PyObject *)self;
}

static int Relay_traverse(RelayObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->on_stun);
    Py_VISIT(self->on_latch);
    for (int i = 0; i < 2; i++) {
        Py_VISIT(self->side[i].rx_owner);
        Py_VISIT(self->side[i].tx_owner);
    }
    return 0;
}

static int Relay_clear(RelayObject *self) {
    Py_CLEAR(self->on_stun);
    Py_CLEAR(self->on_latch);
    return 0;
}

static void Relay_dealloc(RelayObject *self) {
    PyObject_GC_UnTrack(self);
    relay_close_fds(self);
    for (int i = 0; i < 2; i++) side_free_srtp(&self->side[i]);
    PyMem_Free(self->map);
    Relay_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Relay_members[] = {
    {"on_stun", T_OBJECT, offsetof(RelayObject, on_stun), 0,
     "called with (side, data, (host, port)) for each STUN packet"},
    {"on_latch", T_OBJECT, offsetof(RelayObject, on_latch), 0,
     "called with (side, (host, port)) when a side latches to a new source"},
    {NULL}};

static PyMethodDef Relay_methods[] = {
    {"publish", (PyCFunction)Relay_publish, METH_VARARGS,
     "publish(fwd_ab, fwd_ba, rtcp_live, side_a, side_b, map_first, map_last)"},
    {"feed", (PyCFunction)Relay_feed, METH_VARARGS,
     "feed(side, data, (host, port), now_ns) -> (verdict, out, dest): the packet path "
     "without sockets"},
    {"sendto", (PyCFunction)Relay_sendto, METH_VARARGS, "sendto(side, data, (host, port))"},
    {"counters", (PyCFunction)Relay_counters, METH_VARARGS, "counters(side) -> dict"},
    {"latched", (PyCFunction)Relay_latched, METH_VARARGS, "latched(side) -> (host, port)"},
    {"close", (PyCFunction)Relay_close, METH_NOARGS, "close both sockets"},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.relay_native._relay.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Relay_new,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_traverse = (traverseproc)Relay_traverse,
    .tp_clear = (inquiry)Relay_clear,
    .tp_methods = Relay_methods,
    .tp_members = Relay_members,
};

/* -- Hub: one epoll set, the batch buffers, the relay-added latency histogram ------------ */

typedef struct {
    PyObject_HEAD
    int epfd;
    int timestamps;
    int rcvbuf;
    PyObject *relays;   /* set: keeps registered relays alive */
    uint8_t (*bufs)[BUF_SIZE];
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov_in[BATCH], iov_out[BATCH];
    struct sockaddr_storage src[BATCH];
    char ctl[BATCH][64];
    struct timespec rx_ts[BATCH];
    uint32_t *lat;      /* LAT_BUCKETS + 1 */
    uint64_t batches, packets;
} HubObject;

static PyTypeObject HubType;

static PyObject *hub_unregister(PyObject *hub_obj, RelayObject *r) {
    HubObject *hub = (HubObject *)hub_obj;
    for (int i = 0; i < 2; i++)
        if (r->side[i].fd >= 0) epoll_ctl(hub->epfd, EPOLL_CTL_DEL, r->side[i].fd, NULL);
    r->hub = NULL;
    if (PySet_Discard(hub->relays, (PyObject *)r) < 0) PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *Hub_register(HubObject *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &RelayType))
        return PyErr_Format(PyExc_TypeError, "a Relay, not %s", Py_TYPE(arg)->tp_name);
    RelayObject *r = (RelayObject *)arg;
    if (r->hub) return PyErr_Format(PyExc_ValueError, "relay already registered");
    for (int i = 0; i < 2; i++) {
        int fd = r->side[i].fd;
        if (fd < 0) continue;
        if (self->timestamps) {
            int on = 1;
            setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on));
        }
        if (self->rcvbuf > 0 &&  /* past net.core.rmem_max where allowed (root) */
            setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &self->rcvbuf, sizeof(int)) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &self->rcvbuf, sizeof(int));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &r->tags[i]};
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            for (int j = 0; j < i; j++)
                if (r->side[j].fd >= 0) epoll_ctl(self->epfd, EPOLL_CTL_DEL, r->side[j].fd, NULL);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    if (PySet_Add(self->relays, arg) < 0) return NULL;
    r->hub = (PyObject *)self;
    Py_RETURN_NONE;
}

static PyObject *Hub_unregister(HubObject *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &RelayType) || ((RelayObject *)arg)->hub != (PyObject *)self)
        return PyErr_Format(PyExc_ValueError, "not a relay of this hub");
    return hub_unregister((PyObject *)self, (RelayObject *)arg);
}

static void record_latency(HubObject *hub, const struct timespec *rx, const struct timespec *now) {
    if (!rx->tv_sec) return;
    int64_t ns = (int64_t)(now->tv_sec - rx->tv_sec) * 1000000000LL + (now->tv_nsec - rx->tv_nsec);
    int64_t us = ns / 1000;
    if (us < 0) us = 0;
    hub->lat[us < LAT_BUCKETS ? us : LAT_BUCKETS]++;
}

/* Drains one side of one relay: receive a batch, process in place, send the batch.
 * Called with the GIL held (STUN callbacks, counters are plain C). */
static void pump_side(HubObject *hub, RelayObject *r, int s) {
    side_t *in = &r->side[s], *out = &r->side[!s];
    for (;;) {
        if (in->fd < 0) return;
        for (int i = 0; i < BATCH; i++) {
            hub->iov_in[i].iov_base = hub->bufs[i];
            hub->iov_in[i].iov_len = BUF_SIZE;
            struct msghdr *h = &hub->in[i].msg_hdr;
            h->msg_name = &hub->src[i];
            h->msg_namelen = sizeof(hub->src[i]);
            h->msg_iov = &hub->iov_in[i];
            h->msg_iovlen = 1;
            h->msg_control = hub->timestamps ? hub->ctl[i] : NULL;
            h->msg_controllen = hub->timestamps ? sizeof(hub->ctl[i]) : 0;
            h->msg_flags = 0;
        }
        int n = recvmmsg(in->fd, hub->in, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno == ECONNREFUSED) continue;  /* an ICMP error: next packets */
            return;
        }
        int64_t now = mono_ns();
        int k = 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &hub->in[i].msg_hdr;
            int len = (int)hub->in[i].msg_len;
            if (h->msg_flags & MSG_TRUNC) len = BUF_SIZE + 1;
            const addr_t *dest = NULL;
            int v = process(r, s, hub->bufs[i], &len, &hub->src[i], now, &dest);
            in->verdicts[v]++;
            if (v == V_STUN) {
                if (r->on_stun && r->on_stun != Py_None) {
                    PyObject *addr = addr_to_py(&hub->src[i]);
                    PyObject *res = addr ? PyObject_CallFunction(
                        r->on_stun, "iy#N", s, (const char *)hub->bufs[i], (Py_ssize_t)len,
                        addr) : NULL;
                    if (!res) PyErr_WriteUnraisable(r->on_stun);
                    Py_XDECREF(res);
                }
                continue;
            }
            if (v != V_FORWARD) continue;
            if (hub->timestamps) {
                hub->rx_ts[k].tv_sec = 0;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
                    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS)
                        memcpy(&hub->rx_ts[k], CMSG_DATA(c), sizeof(struct timespec));
            }
            hub->iov_out[k].iov_base = hub->bufs[i];
            hub->iov_out[k].iov_len = (size_t)len;
            struct msghdr *o = &hub->out[k].msg_hdr;
            memset(o, 0, sizeof(*o));
            o->msg_name = (void *)&dest->ss;
            o->msg_namelen = dest->len;
            o->msg_iov = &hub->iov_out[k];
            o->msg_iovlen = 1;
            k++;
        }
        int sent = 0;
        while (sent < k && out->fd >= 0) {
            int m = sendmmsg(out->fd, hub->out + sent, k - sent, MSG_DONTWAIT);
            if (m <= 0) {
                if (m < 0 && errno == ECONNREFUSED) continue;
                if (m < 0 && errno == EINTR) continue;
                break;
            }
            sent += m;
        }
        latch_callback(r, s);
        for (int i = 0; i < sent; i++) {
            out->out_packets++;
            out->out_bytes += hub->iov_out[i].iov_len;
        }
        in->verdicts[V_FORWARD] -= (uint64_t)(k - sent);
        in->verdicts[V_SEND] += (uint64_t)(k - sent);
        if (hub->timestamps && sent) {
            struct timespec t;
            clock_gettime(CLOCK_REALTIME, &t);
            for (int i = 0; i < sent; i++) record_latency(hub, &hub->rx_ts[i], &t);
        }
        hub->batches++;
        hub->packets += (uint64_t)n;
        if (n < BATCH) return;
    }
}

/* One epoll round: wait up to timeout_ms, pump every ready side. Returns events handled. */
static int hub_round(HubObject *self, int timeout_ms, int release_gil) {
    struct epoll_event evs[128];
    int n;
    if (release_gil) {
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(self->epfd, evs, 128, timeout_ms);
        Py_END_ALLOW_THREADS
    } else {
        n = epoll_wait(self->epfd, evs, 128, timeout_ms);
    }
    /* every relay of this round is held until its end: an on_stun callback may close and
     * drop any relay, whose event may still be further down the list */
    RelayObject *held[128];
    int sides[128];
    for (int i = 0; i < n; i++) {
        struct { RelayObject *relay; int side; } *tag = evs[i].data.ptr;
        held[i] = tag->relay;
        sides[i] = tag->side;
        Py_INCREF(held[i]);
    }
    for (int i = 0; i < n; i++) pump_side(self, held[i], sides[i]);
    for (int i = 0; i < n; i++) Py_DECREF(held[i]);
    return n < 0 ? 0 : n;
}

static PyObject *Hub_poll(HubObject *self, PyObject *args) {
    int timeout_ms = 0;
    if (!PyArg_ParseTuple(args, "|i", &timeout_ms)) return NULL;
    return PyLong_FromLong(hub_round(self, timeout_ms, timeout_ms != 0));
}

static PyObject *Hub_run(HubObject *self, PyObject *args) {
    double seconds;
    if (!PyArg_ParseTuple(args, "d", &seconds)) return NULL;
    int64_t end = mono_ns() + (int64_t)(seconds * 1e9);
    while (mono_ns() < end) {
        hub_round(self, 20, 1);
        if (PyErr_CheckSignals() < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Hub_fileno(HubObject *self, PyObject *unused) {
    return PyLong_FromLong(self->epfd);
}

static PyObject *Hub_latency(HubObject *self, PyObject *args) {
    int reset = 0;
    if (!PyArg_ParseTuple(args, "|p", &reset)) return NULL;
    PyObject *list = PyList_New(LAT_BUCKETS + 1);
    if (!list) return NULL;
    for (int i = 0; i <= LAT_BUCKETS; i++) {
        PyObject *v = PyLong_FromUnsignedLong(self->lat[i]);
        if (!v) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, v);
    }
    if (reset) memset(self->lat, 0, sizeof(uint32_t) * (LAT_BUCKETS + 1));
    return list;
}

static PyObject *Hub_stats(HubObject *self, PyObject *unused) {
    return Py_BuildValue("{sKsKsn}", "batches", self->batches, "packets", self->packets,
                         "relays", PySet_GET_SIZE(self->relays));
}

static PyObject *Hub_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"timestamps", "rcvbuf", NULL};
    int timestamps = 0, rcvbuf = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|pi", names, &timestamps, &rcvbuf)) return NULL;
    HubObject *self = (HubObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->timestamps = timestamps;
    self->rcvbuf = rcvbuf;
    self->relays = PySet_New(NULL);
    self->bufs = PyMem_Calloc(BATCH, BUF_SIZE);
    self->lat = PyMem_Calloc(LAT_BUCKETS + 1, sizeof(uint32_t));
    if (self->epfd < 0 || !self->relays || !self->bufs || !self->lat) {
        int no_fd = self->epfd < 0;
        Py_DECREF(self);
        return no_fd ? PyErr_SetFromErrno(PyExc_OSError) : PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void Hub_dealloc(HubObject *self) {
    PyObject_GC_UnTrack(self);
    if (self->relays) {
        PyObject *it = PyObject_GetIter(self->relays), *r;
        while (it && (r = PyIter_Next(it))) {
            ((RelayObject *)r)->hub = NULL;
            Py_DECREF(r);
        }
        Py_XDECREF(it);
        PyErr_Clear();
    }
    Py_CLEAR(self->relays);
    if (self->epfd >= 0) close(self->epfd);
    PyMem_Free(self->bufs);
    PyMem_Free(self->lat);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Hub_traverse(HubObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->relays);
    return 0;
}

static int Hub_clear(HubObject *self) {
    Py_CLEAR(self->relays);
    return 0;
}

static PyMethodDef Hub_methods[] = {
    {"register", (PyCFunction)Hub_register, METH_O, "register(relay): poll its sockets"},
    {"unregister", (PyCFunction)Hub_unregister, METH_O, "unregister(relay)"},
    {"poll", (PyCFunction)Hub_poll, METH_VARARGS,
     "poll(timeout_ms=0) -> events: pump every ready socket once"},
    {"run", (PyCFunction)Hub_run, METH_VARARGS,
     "run(seconds): pump until the time is up (GIL released while waiting)"},
    {"fileno", (PyCFunction)Hub_fileno, METH_NOARGS, "the epoll fd (readable when work)"},
    {"latency", (PyCFunction)Hub_latency, METH_VARARGS,
     "latency(reset=False) -> receive-to-send histogram, 1 us buckets, last = overflow"},
    {"stats", (PyCFunction)Hub_stats, METH_NOARGS, "batches, packets, relays"},
    {NULL}};

static PyTypeObject HubType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.relay_native._relay.Hub",
    .tp_basicsize = sizeof(HubObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Hub_new,
    .tp_dealloc = (destructor)Hub_dealloc,
    .tp_traverse = (traverseproc)Hub_traverse,
    .tp_clear = (inquiry)Hub_clear,
    .tp_methods = Hub_methods,
};

/* -- the load generator of the benchmarks (here so that it is cheaper than the relay) ---- */
#include "loadgen.h"

static PyMethodDef module_methods[] = {
    {"loadgen", (PyCFunction)(void (*)(void))loadgen, METH_VARARGS | METH_KEYWORDS,
     LOADGEN_DOC},
    {"set_external_srtp", set_external_srtp, METH_VARARGS,
     "set_external_srtp(protect, unprotect, protect_rtcp, unprotect_rtcp): the addresses of "
     "another libsrtp build's functions, run on sessions published as (owner, address)"},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_relay", "The media relay's native packet path.", -1,
    module_methods};

PyMODINIT_FUNC PyInit__relay(void) {
    if (srtp_init() != srtp_err_status_ok) {
        PyErr_SetString(PyExc_ImportError, "srtp_init failed");
        return NULL;
    }
    if (PyType_Ready(&RelayType) < 0 || PyType_Ready(&HubType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RelayType);
    Py_INCREF(&HubType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObject(m, "Hub", (PyObject *)&HubType) < 0 ||
        PyModule_AddIntConstant(m, "MAP_CAP", MAP_CAP) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PACKET", MAX_IN) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
