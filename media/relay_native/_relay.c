/* The fast packet path of the media relay: one Relay per stream component owns the UDP
 * sockets of its two sides (A: the Microsoft/ICE side, B: the video side); a Hub polls many
 * relays with one epoll set, receives in batches (recvmmsg), applies the published plan
 * (direction, latching, SRTP through libsrtp, SSRC mapping) in place in a per-hub buffer
 * ring, and sends in batches (sendmmsg). No Python frame and no allocation per packet.
 *
 * A hub is pumped either from the calling thread (poll/run, the asyncio loop's reader) or,
 * once started, by its own worker thread: a plain pthread that never takes the GIL (it runs
 * no Python at all). Several started hubs give one process several cores. What the worker
 * shares with Python threads:
 * - the hub's batch lock (`mu`), held while one relay side is pumped; everything that reads
 *   or changes a relay's plan, latch state, counters or fds from Python takes it too;
 * - the plan: an immutable plan_t that publish builds outside the lock (SRTP sessions are
 *   made there), swaps in under the lock, and frees after it: no batch can still read it;
 * - the epoll tags: a slot index and generation, checked under the lock, so that an event
 *   of a relay unregistered (or closed, its fd number reused) meanwhile is ignored;
 * - callbacks (on_stun, on_latch): queued in C, the hub's notify eventfd written, and run
 *   by `poll`/`deliver` on the thread that calls them (the event loop's, through attach);
 * - the SSRC map (ssrcmap_t), shared by a stream's RTP and RTCP relays (share_map), which
 *   may sit on two hubs and so two workers: it has its own lock, taken inside a hub's lock
 *   (never the other way round) for the rewrite of one packet.
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
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <srtp2/srtp.h>

#include "udp_common.h"

#define BATCH 64
#define BUF_SIZE 2048
#define MAX_IN (BUF_SIZE - 64)  /* room for the SRTP(C) trailer added by protect */
#define MAX_MKI 16
#define MAP_CAP 1024
#define AUTH_TAG 10
#define LAT_BUCKETS 20000       /* 1 us buckets up to 20 ms, then one overflow bucket */
/* pylibsrtp (the portable path) works in a 1500-byte buffer and reserves its largest trailer
 * (144 bytes SRTP, 148 SRTCP) before protecting: both paths refuse the same sizes */
#define SRTP_BUF 1500
#define SRTP_TRAILER 144
#define SRTCP_TRAILER 148
#define PUMP_BATCHES 8          /* per ready socket and wake-up */
#define QUEUE_CAP 4096          /* callbacks waiting for the loop; past it they are dropped */

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

/* One SRTP session, shared by the plans that carry the same key (so that replay state and
 * rollover counters survive a re-publish). `refs` changes only under the GIL and never
 * while a batch can reach the session (see Relay_publish). */
typedef struct {
    srtp_t ctx;
    PyObject *owner;    /* set: an external session (see set_external_srtp) */
    uint8_t key[30];
    int key_len;
    int refs;
} sess_t;

/* One side's rules in a plan (immutable once published). */
typedef struct {
    int mode;
    addr_t sdp;
    int64_t relatch_after_ns;
    sess_t *rx, *tx;
    uint8_t mki[MAX_MKI];
    int mki_len;
} rules_t;

typedef struct {
    rules_t side[2];
    int fwd[2];          /* RTP allowed from side i to the other */
    int rtcp_live;
} plan_t;

static const plan_t EMPTY_PLAN;  /* before the first publish: only STUN goes anywhere */

/* One side's mutable state, owned by the packet path (read from Python under the lock). */
typedef struct {
    addr_t latched;
    int64_t last_heard;
    uint64_t relatches;
    int latch_changed;   /* on_latch is due (queued after the batch, outside process) */
    /* counters for packets received on this side, and sent from it */
    uint64_t in_packets, in_bytes, out_packets, out_bytes;
    uint64_t verdicts[V_COUNT];
    int fd;
} side_t;

typedef struct {
    uint32_t from, to;
} map_entry_t;

/* An SSRC map (endpoint SSRC -> ours), shared by the relays of one stream so that the RTCP
 * relay unmaps SSRCs the RTP relay mapped. `refs` (the relays holding it) and the range
 * change only under the GIL; the table changes under `mu` (the packet path of either relay,
 * or a publish bringing a new range). */
typedef struct {
    pthread_mutex_t mu;
    int refs;
    int has_range;
    uint32_t first, last, next;
    map_entry_t *tab;    /* FIFO ring, oldest at head */
    int len, cap, head;
} ssrcmap_t;

typedef struct RelayObject {
    PyObject_HEAD
    plan_t *plan;        /* NULL: EMPTY_PLAN */
    side_t side[2];
    /* the SSRC map: whether to map comes with the plan (under the hub lock), the table may
     * be shared with the stream's other relay; NULL once closed (made again on demand) */
    int mapping;
    ssrcmap_t *smap;
    PyObject *on_stun;
    PyObject *on_latch;
    PyObject *hub;       /* borrowed while registered (the hub's set holds the relay) */
    uint32_t slot;       /* this relay's slot in its hub */
} RelayObject;

static int addr_eq(const addr_t *a, const struct sockaddr_storage *ss) {
    return a->valid && sockaddr_eq(&a->ss, ss);
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
    if (sockaddr_from_host(host, port, &out->ss, &out->len) < 0) return -1;
    out->valid = 1;
    return 0;
}

/* -- SSRC mapping (media.ssrc.SsrcMapper's rule, table capped at MAP_CAP) ---------------- */

/* Under m->mu, with a range set. */
static uint32_t map_ssrc(ssrcmap_t *m, uint32_t original) {
    for (int i = 0; i < m->len; i++) {
        map_entry_t *e = &m->tab[(m->head + i) % m->cap];
        if (e->from == original) return e->to;
    }
    uint32_t mapped;
    if (m->len == m->cap) {      /* full: reuse the oldest entry's SSRC */
        map_entry_t *old = &m->tab[m->head];
        mapped = old->to;
        m->head = (m->head + 1) % m->cap;
        m->len--;
    } else {
        uint64_t size = (uint64_t)m->last - m->first + 1;
        mapped = m->next;
        m->next = (uint32_t)(m->first + ((uint64_t)m->next - m->first + 1) % size);
    }
    map_entry_t *slot = &m->tab[(m->head + m->len) % m->cap];
    slot->from = original;
    slot->to = mapped;
    m->len++;
    return mapped;
}

static uint32_t unmap_ssrc(ssrcmap_t *m, uint32_t mapped) {
    for (int i = 0; i < m->len; i++) {
        map_entry_t *e = &m->tab[(m->head + i) % m->cap];
        if (e->to == mapped) return e->from;
    }
    return mapped;
}

/* A new, unshared map with no range (under the GIL). NULL: out of memory (no exception). */
static ssrcmap_t *smap_new(void) {
    ssrcmap_t *m = PyMem_Calloc(1, sizeof(ssrcmap_t));
    if (!m) return NULL;
    if (pthread_mutex_init(&m->mu, NULL)) {
        PyMem_Free(m);
        return NULL;
    }
    m->refs = 1;
    return m;
}

/* One holder fewer (under the GIL); the last frees it. No packet path can reach it then:
 * each relay drops its pointer under its hub lock, or once unregistered, before this. */
static void smap_release(ssrcmap_t *m) {
    if (!m || --m->refs > 0) return;
    pthread_mutex_destroy(&m->mu);
    PyMem_Free(m->tab);
    PyMem_Free(m);
}

static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

enum { F_SAME = 0, F_MAP = 1, F_UNMAP = 2 };

static inline void swap_at(ssrcmap_t *r, uint8_t *p, int fn) {
    if (fn == F_MAP) wr32(p, map_ssrc(r, rd32(p)));
    else if (fn == F_UNMAP) wr32(p, unmap_ssrc(r, rd32(p)));
}

/* media.ssrc.rewrite_rtcp, in place (under r->mu) */
static void rewrite_rtcp(ssrcmap_t *r, uint8_t *pkt, int end, int sender, int about) {
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

/* Applies plan `p` to one packet received on side `s` from `src`, in place in `buf` (at
 * least BUF_SIZE bytes). Returns the verdict; for V_FORWARD, *len is the length to send and
 * *dest the target on the other side. Called under the relay's hub lock (or unregistered). */
static int process(RelayObject *r, const plan_t *p, int s, uint8_t *buf, int *len,
                   const struct sockaddr_storage *src, int64_t now, const addr_t **dest) {
    const rules_t *rin = &p->side[s], *rout = &p->side[!s];
    side_t *in = &r->side[s], *out = &r->side[!s];
    int n = *len;
    in->in_packets++;
    in->in_bytes += (uint64_t)n;
    if (n > 0 && buf[0] < 4) return V_STUN;
    if (n > MAX_IN || n < 8 || buf[0] >> 6 != 2) return V_MALFORMED;
    int rtcp = is_rtcp(buf);
    if (!rtcp && n < 12) return V_MALFORMED;
    /* latching (reliab-media's Latch.accept) */
    if (rin->mode != MODE_FIXED) {
        if (!addr_eq(&in->latched, src)) {
            int exact = rin->mode == MODE_STRICT && addr_eq(&rin->sdp, src);
            if (in->latched.valid && !exact && now - in->last_heard < rin->relatch_after_ns)
                return V_SOURCE;
            if (rin->mode == MODE_STRICT && !host_eq(&rin->sdp, src)) return V_SOURCE;
            if (in->latched.valid) in->relatches++;
            memcpy(&in->latched.ss, src, sizeof(*src));
            in->latched.len = src->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                        : sizeof(struct sockaddr_in6);
            in->latched.valid = 1;
            in->latch_changed = 1;
        }
        in->last_heard = now;
    }
    /* the receiving SRTP context sees every packet of the peer, even one the direction
     * then drops (a hold): its rollover counter is implicit too, and a wrap it did not see
     * would leave it a rollover behind the sender after the resume */
    if (rin->rx) {
        if (n > SRTP_BUF) return V_SRTP;
        if (rin->mki_len) {
            if (n < 12 + rin->mki_len + AUTH_TAG) return V_SRTP;
            int at = n - AUTH_TAG - rin->mki_len;
            if (memcmp(buf + at, rin->mki, rin->mki_len)) return V_SRTP;
            memmove(buf + at, buf + at + rin->mki_len, AUTH_TAG);
            n -= rin->mki_len;
        }
        srtp_err_status_t st = run_srtp(rin->rx->ctx, rin->rx->owner != NULL, rtcp ? 3 : 1,
                                        buf, &n);
        if (st != srtp_err_status_ok) return V_SRTP;
    }
    if (!(rtcp ? p->rtcp_live : p->fwd[s])) return V_DIRECTION;
    ssrcmap_t *m = r->smap;
    if (r->mapping && m && (s == SIDE_B || rtcp)) {
        pthread_mutex_lock(&m->mu);   /* the stream's other relay may be on another worker */
        if (m->has_range) {
            if (s == SIDE_B) {
                if (rtcp) rewrite_rtcp(m, buf, n, F_MAP, F_UNMAP);
                else if (n >= 12) swap_at(m, buf + 8, F_MAP);
            } else {
                rewrite_rtcp(m, buf, n, F_SAME, F_UNMAP);
            }
        }
        pthread_mutex_unlock(&m->mu);
    }
    /* the route is settled before the sending SRTP context sees the packet: its rollover
     * counter is implicit (RFC 3711 3.3.1), so it must protect only what leaves; packets
     * protected and then dropped for want of a route (no ICE pair yet) across a sequence
     * wrap put our ROC ahead of the receiver's, which then refused every later packet */
    const addr_t *target = rout->mode != MODE_FIXED && out->latched.valid ? &out->latched
                                                                        : &rout->sdp;
    if (!target->valid) return V_NO_ROUTE;
    if (rout->tx) {
        if (n + (rtcp ? SRTCP_TRAILER : SRTP_TRAILER) > SRTP_BUF) return V_SRTP;
        srtp_err_status_t st = run_srtp(rout->tx->ctx, rout->tx->owner != NULL, rtcp ? 2 : 0,
                                        buf, &n);
        if (st != srtp_err_status_ok) return V_SRTP;
    }
    *dest = target;
    *len = n;
    return V_FORWARD;
}

/* -- plans and their SRTP sessions -------------------------------------------------------- */

static void sess_release(sess_t *x) {
    if (!x || --x->refs > 0) return;
    if (x->owner) Py_DECREF(x->owner);   /* the external library frees its own session */
    else if (x->ctx) srtp_dealloc(x->ctx);
    PyMem_Free(x);
}

static void plan_free(plan_t *p) {
    if (!p) return;
    for (int i = 0; i < 2; i++) {
        sess_release(p->side[i].rx);
        sess_release(p->side[i].tx);
    }
    PyMem_Free(p);
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

/* The session for `key` in a new plan: NULL for None; for 30 bytes of key + salt, a system
 * libsrtp2 session; for (owner, address), an external session. The previous plan's session
 * `prev` is shared (one more reference) when it is the same key or the same session. */
static int sess_for(sess_t *prev, PyObject *key, int inbound, sess_t **out) {
    *out = NULL;
    if (key == Py_None) return 0;
    sess_t *x;
    if (PyTuple_Check(key)) {
        PyObject *who;
        unsigned long long address;
        if (!PyArg_ParseTuple(key, "OK", &who, &address)) return -1;
        if (!ext_fn[0]) {
            PyErr_SetString(PyExc_ValueError, "external SRTP session without set_external_srtp");
            return -1;
        }
        if (prev && prev->owner && prev->ctx == (srtp_t)(uintptr_t)address) {
            prev->refs++;
            *out = prev;
            return 0;
        }
        if (!(x = PyMem_Calloc(1, sizeof(*x)))) {
            PyErr_NoMemory();
            return -1;
        }
        Py_INCREF(who);
        x->owner = who;
        x->ctx = (srtp_t)(uintptr_t)address;
        x->refs = 1;
        *out = x;
        return 0;
    }
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(key, &data, &len) < 0) return -1;
    if (len != 30) {
        PyErr_SetString(PyExc_ValueError, "SRTP key must be 30 bytes (AES_CM_128 key + salt)");
        return -1;
    }
    if (prev && !prev->owner && prev->key_len == len && !memcmp(prev->key, data, len)) {
        prev->refs++;
        *out = prev;
        return 0;
    }
    if (!(x = PyMem_Calloc(1, sizeof(*x)))) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(x->key, data, len);
    x->key_len = (int)len;
    x->refs = 1;
    if (make_session(&x->ctx, x->key, inbound) < 0) {
        PyMem_Free(x);
        return -1;
    }
    *out = x;
    return 0;
}

static int rules_from_py(rules_t *out, const rules_t *prev, PyObject *t) {
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
    if (addr_from_py(sdp, &out->sdp) < 0) return -1;
    if (sess_for(prev->rx, rx_key, 1, &out->rx) < 0) return -1;
    if (sess_for(prev->tx, tx_key, 0, &out->tx) < 0) return -1;
    out->mode = mode;
    out->relatch_after_ns = relatch_ns;
    memcpy(out->mki, mki, mki_len);
    out->mki_len = (int)mki_len;
    return 0;
}

/* -- Hub (declarations the relay needs) --------------------------------------------------- */

typedef struct {
    RelayObject *relay;  /* NULL: free */
    uint32_t gen;
} slot_t;

typedef struct cb_t {   /* one callback waiting for the loop */
    struct cb_t *next;
    uint32_t slot, gen;
    int side, kind;      /* CB_STUN: data is the packet; CB_LATCH: addr is the new source */
    struct sockaddr_storage addr;
    int len;
    uint8_t data[];
} cb_t;

enum { CB_STUN = 0, CB_LATCH = 1 };
#define WAKE_TAG UINT64_MAX

typedef struct {
    PyObject_HEAD
    int epfd;
    int timestamps;
    int rcvbuf;
    PyObject *relays;   /* set: keeps registered relays alive */
    pthread_mutex_t mu; /* the batch lock (see the top of this file) */
    slot_t *slots;
    uint32_t nslots, next_gen;
    Py_ssize_t count;
    uint8_t (*bufs)[BUF_SIZE];
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov_in[BATCH], iov_out[BATCH];
    struct sockaddr_storage src[BATCH];
    char ctl[BATCH][64];
    struct timespec rx_ts[BATCH];
    int dirty;          /* receive headers the last recvmmsg filled (to reset) */
    uint32_t *lat;      /* LAT_BUCKETS + 1 */
    uint64_t batches, packets;
    /* callbacks queued for the thread that polls (the event loop's) */
    pthread_mutex_t qmu;
    cb_t *qhead, *qtail;
    int qlen;
    uint64_t qdropped;
    int notify_fd, own_notify;  /* written when a worker queued callbacks */
    int wake_fd;                /* in the epoll set: stop() wakes the worker */
    pthread_t thread;
    pid_t owner;                /* the process that started the worker (not a fork of it) */
    int running;
    int stopping;               /* atomic: the worker leaves at its next wake-up */
    int ready;                  /* the mutexes are initialised */
    int coalesce_us;            /* worker: nap after a busy round (see hub_worker) */
    uint64_t rounds;            /* atomic: the worker's epoll rounds (its wake-ups) */
} HubObject;

static PyTypeObject HubType;

static pthread_mutex_t *relay_lock(RelayObject *r) {
    if (!r->hub) return NULL;
    pthread_mutex_t *mu = &((HubObject *)r->hub)->mu;
    /* a worker holds it at most for one relay side's batch, and never waits for the GIL */
    pthread_mutex_lock(mu);
    return mu;
}

static void relay_unlock(pthread_mutex_t *mu) {
    if (mu) pthread_mutex_unlock(mu);
}

/* -- Relay ------------------------------------------------------------------------------- */

static PyObject *Relay_publish(RelayObject *self, PyObject *args) {
    int fwd_ab, fwd_ba, rtcp_live;
    long long map_first, map_last;
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "pppOOLL", &fwd_ab, &fwd_ba, &rtcp_live, &a, &b, &map_first,
                          &map_last))
        return NULL;
    const plan_t *old = self->plan ? self->plan : &EMPTY_PLAN;
    if (map_first >= 0 && (map_last < map_first || map_last > 0xffffffffLL)) {
        PyErr_SetString(PyExc_ValueError, "bad SSRC range");
        return NULL;
    }
    /* the new plan is built whole outside the lock (making SRTP sessions is the slow part) */
    plan_t *p = PyMem_Calloc(1, sizeof(plan_t));
    if (!p) return PyErr_NoMemory();
    if (rules_from_py(&p->side[SIDE_A], &old->side[SIDE_A], a) < 0 ||
        rules_from_py(&p->side[SIDE_B], &old->side[SIDE_B], b) < 0) {
        plan_free(p);
        return NULL;
    }
    p->fwd[SIDE_A] = fwd_ab;
    p->fwd[SIDE_B] = fwd_ba;
    p->rtcp_live = rtcp_live;
    /* a range other than the (shared) table's starts a new table, for both relays; a plan
     * without one stops this relay mapping and leaves the table as it is */
    if (!self->smap && !(self->smap = smap_new())) {
        plan_free(p);
        return PyErr_NoMemory();
    }
    ssrcmap_t *m = self->smap;   /* its range changes only under the GIL: read without mu */
    int new_map = map_first >= 0 && (!m->has_range || m->first != map_first ||
                                     m->last != map_last);
    map_entry_t *fresh = NULL, *stale = NULL;
    int cap = 0;
    if (new_map) {
        uint64_t size = (uint64_t)(map_last - map_first) + 1;
        cap = size < MAP_CAP ? (int)size : MAP_CAP;
        if (!(fresh = PyMem_Calloc(cap, sizeof(map_entry_t)))) {
            plan_free(p);
            return PyErr_NoMemory();
        }
        pthread_mutex_lock(&m->mu);
        stale = m->tab;
        m->tab = fresh;
        m->cap = cap;
        m->len = m->head = 0;
        m->first = m->next = (uint32_t)map_first;
        m->last = (uint32_t)map_last;
        m->has_range = 1;
        pthread_mutex_unlock(&m->mu);
    }
    pthread_mutex_t *mu = relay_lock(self);
    for (int i = 0; i < 2; i++) {   /* a new SDP address starts latching over */
        const addr_t *was = &old->side[i].sdp, *now = &p->side[i].sdp;
        if (was->valid != now->valid || (now->valid && !addr_eq(was, &now->ss)))
            self->side[i].latched.valid = 0;
    }
    plan_t *prev = self->plan;
    self->plan = p;
    self->mapping = map_first >= 0;
    relay_unlock(mu);
    /* no batch can hold the old plan now: it read self->plan under the lock */
    plan_free(prev);
    PyMem_Free(stale);
    Py_RETURN_NONE;
}

static void call_latch(RelayObject *r, int s, const struct sockaddr_storage *ss) {
    if (!r->on_latch || r->on_latch == Py_None) return;
    PyObject *addr = addr_to_py(ss);
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
    addr_t to;
    struct sockaddr_storage latched;
    pthread_mutex_t *mu = relay_lock(self);
    int v = process(self, self->plan ? self->plan : &EMPTY_PLAN, s, buf, &len, &src.ss, now,
                    &dest);
    side_t *x = &self->side[s];
    x->verdicts[v]++;
    int latch = x->latch_changed && x->latched.valid;
    x->latch_changed = 0;
    if (latch) latched = x->latched.ss;
    if (v == V_FORWARD) {
        self->side[!s].out_packets++;
        self->side[!s].out_bytes += (uint64_t)len;
        to = *dest;
    }
    relay_unlock(mu);
    if (latch) call_latch(self, s, &latched);
    if (v != V_FORWARD) return Py_BuildValue("(iOO)", v, Py_None, Py_None);
    PyObject *d = addr_to_py(&to.ss);
    if (!d) return NULL;
    return Py_BuildValue("(iy#N)", v, (const char *)buf, (Py_ssize_t)len, d);
}

static PyObject *Relay_sendto(RelayObject *self, PyObject *args) {
    int s;
    Py_buffer data;
    PyObject *dest;
    if (!PyArg_ParseTuple(args, "iy*O", &s, &data, &dest)) return NULL;
    addr_t to;
    /* fds change only on this (the GIL's) side: no lock to read one */
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
    pthread_mutex_t *mu = relay_lock(self);   /* a snapshot between two batches */
    side_t x = self->side[s];
    relay_unlock(mu);
    PyObject *d = Py_BuildValue("{sKsKsKsKsK}", "packets_in", x.in_packets, "bytes_in",
                                x.in_bytes, "packets_out", x.out_packets, "bytes_out",
                                x.out_bytes, "relatches", x.relatches);
    if (!d) return NULL;
    for (int i = 0; i < V_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(x.verdicts[i]);
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
    pthread_mutex_t *mu = relay_lock(self);
    addr_t latched = self->side[s].latched;
    relay_unlock(mu);
    if (!latched.valid) Py_RETURN_NONE;
    return addr_to_py(&latched.ss);
}

static void hub_unregister(HubObject *hub, RelayObject *r);

static void relay_close_fds(RelayObject *self) {
    /* unregistered first: after that no worker reaches this relay, so its fds may go */
    if (self->hub) hub_unregister((HubObject *)self->hub, self);
    for (int i = 0; i < 2; i++) {
        if (self->side[i].fd >= 0) close(self->side[i].fd);
        self->side[i].fd = -1;
    }
}

/* Drops this relay's hold on its SSRC map (after relay_close_fds: unregistered). */
static void relay_drop_map(RelayObject *self) {
    ssrcmap_t *m = self->smap;
    self->smap = NULL;
    smap_release(m);
}

static PyObject *Relay_close(RelayObject *self, PyObject *unused) {
    relay_close_fds(self);
    relay_drop_map(self);
    Py_RETURN_NONE;
}

static PyObject *Relay_share_map(RelayObject *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, Py_TYPE(self))) {
        PyErr_SetString(PyExc_TypeError, "share_map takes a Relay");
        return NULL;
    }
    RelayObject *other = (RelayObject *)arg;
    if (!self->smap && !(self->smap = smap_new())) return PyErr_NoMemory();
    ssrcmap_t *m = self->smap, *prev = other->smap;
    if (prev == m) Py_RETURN_NONE;
    m->refs++;
    pthread_mutex_t *mu = relay_lock(other);   /* its packet path reads smap under this */
    other->smap = m;
    relay_unlock(mu);
    smap_release(prev);
    Py_RETURN_NONE;
}

static PyObject *Relay_map_holders(RelayObject *self, PyObject *unused) {
    return PyLong_FromLong(self->smap ? self->smap->refs : 0);
}

static int Relay_init(RelayObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd_a", "fd_b", NULL};
    int fa = -1, fb = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ii", names, &fa, &fb)) return -1;
    if (self->hub) {
        PyErr_SetString(PyExc_ValueError, "a registered relay cannot be re-initialised");
        return -1;
    }
    self->side[0].fd = fa;
    self->side[1].fd = fb;
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
    if (self->plan)
        for (int i = 0; i < 2; i++) {
            if (self->plan->side[i].rx) Py_VISIT(self->plan->side[i].rx->owner);
            if (self->plan->side[i].tx) Py_VISIT(self->plan->side[i].tx->owner);
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
    plan_free(self->plan);
    self->plan = NULL;
    relay_drop_map(self);
    Relay_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Relay_members[] = {
    {"on_stun", T_OBJECT, offsetof(RelayObject, on_stun), 0,
     "called with (side, data, (host, port)) for each STUN packet"},
    {"on_latch", T_OBJECT, offsetof(RelayObject, on_latch), 0,
     "called with (side, (host, port)) when a side latches to a new source"},
    {"hub", T_OBJECT, offsetof(RelayObject, hub), READONLY, "the hub it is registered with"},
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
    {"close", (PyCFunction)Relay_close, METH_NOARGS,
     "close both sockets (and drop this relay's hold on its SSRC map)"},
    {"share_map", (PyCFunction)Relay_share_map, METH_O,
     "share_map(other): other drops its SSRC map and uses this relay's from now on"},
    {"map_holders", (PyCFunction)Relay_map_holders, METH_NOARGS,
     "map_holders() -> the relays holding this relay's SSRC map (0: none, closed)"},
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

/* -- Hub: one epoll set, the batch buffers, the relay-added latency histogram, and (once
 * started) the worker thread that pumps them ------------------------------------------------ */

static inline uint64_t slot_tag(uint32_t slot, uint32_t gen, int side) {
    return (uint64_t)gen << 32 | (uint64_t)slot << 1 | (uint64_t)side;
}

/* The relay an epoll tag names, if it is still registered (under the lock, or the GIL). */
static RelayObject *slot_relay(HubObject *hub, uint32_t slot, uint32_t gen) {
    if (slot >= hub->nslots || hub->slots[slot].gen != gen) return NULL;
    return hub->slots[slot].relay;
}

static void hub_unregister(HubObject *hub, RelayObject *r) {
    pthread_mutex_lock(&hub->mu);
    for (int i = 0; i < 2; i++)
        if (r->side[i].fd >= 0) epoll_ctl(hub->epfd, EPOLL_CTL_DEL, r->side[i].fd, NULL);
    hub->slots[r->slot].relay = NULL;
    hub->slots[r->slot].gen = 0;
    pthread_mutex_unlock(&hub->mu);
    r->hub = NULL;
    hub->count--;
    if (PySet_Discard(hub->relays, (PyObject *)r) < 0) PyErr_Clear();
}

static PyObject *Hub_register(HubObject *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &RelayType))
        return PyErr_Format(PyExc_TypeError, "a Relay, not %s", Py_TYPE(arg)->tp_name);
    RelayObject *r = (RelayObject *)arg;
    if (r->hub) return PyErr_Format(PyExc_ValueError, "relay already registered");
    if (!self->relays) return PyErr_Format(PyExc_ValueError, "hub cleared");
    uint32_t slot = 0;
    while (slot < self->nslots && self->slots[slot].relay) slot++;
    if (slot == 0x7fffffff) return PyErr_Format(PyExc_ValueError, "too many relays");
    slot_t *grown = NULL;
    if (slot == self->nslots) {     /* grown outside the lock, swapped in under it */
        uint32_t cap = self->nslots ? 2 * self->nslots : 64;
        if (!(grown = PyMem_Calloc(cap, sizeof(slot_t)))) return PyErr_NoMemory();
        if (self->nslots) memcpy(grown, self->slots, sizeof(slot_t) * self->nslots);
        pthread_mutex_lock(&self->mu);
        slot_t *old = self->slots;
        self->slots = grown;
        self->nslots = cap;
        pthread_mutex_unlock(&self->mu);
        PyMem_Free(old);
    }
    if (++self->next_gen == 0 || self->next_gen == UINT32_MAX) self->next_gen = 1;
    uint32_t gen = self->next_gen;
    pthread_mutex_lock(&self->mu);
    self->slots[slot].relay = r;
    self->slots[slot].gen = gen;
    pthread_mutex_unlock(&self->mu);
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
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = slot_tag(slot, gen, i)};
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            int err = errno;
            pthread_mutex_lock(&self->mu);
            for (int j = 0; j < i; j++)
                if (r->side[j].fd >= 0) epoll_ctl(self->epfd, EPOLL_CTL_DEL, r->side[j].fd, NULL);
            self->slots[slot].relay = NULL;
            self->slots[slot].gen = 0;
            pthread_mutex_unlock(&self->mu);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    if (PySet_Add(self->relays, arg) < 0) {
        r->hub = (PyObject *)self;
        r->slot = slot;
        self->count++;
        hub_unregister(self, r);
        return NULL;
    }
    r->hub = (PyObject *)self;
    r->slot = slot;
    self->count++;
    Py_RETURN_NONE;
}

static PyObject *Hub_unregister(HubObject *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &RelayType) || ((RelayObject *)arg)->hub != (PyObject *)self)
        return PyErr_Format(PyExc_ValueError, "not a relay of this hub");
    hub_unregister(self, (RelayObject *)arg);
    Py_RETURN_NONE;
}

static void record_latency(HubObject *hub, const struct timespec *rx, const struct timespec *now) {
    if (!rx->tv_sec) return;
    int64_t ns = (int64_t)(now->tv_sec - rx->tv_sec) * 1000000000LL + (now->tv_nsec - rx->tv_nsec);
    int64_t us = ns / 1000;
    if (us < 0) us = 0;
    hub->lat[us < LAT_BUCKETS ? us : LAT_BUCKETS]++;
}

/* Queues a callback for the polling thread (any thread, no GIL needed). Returns 1 if queued. */
static int queue_push(HubObject *hub, uint32_t slot, uint32_t gen, int side, int kind,
                      const struct sockaddr_storage *addr, const uint8_t *data, int len) {
    cb_t *cb = NULL;
    pthread_mutex_lock(&hub->qmu);
    if (hub->qlen < QUEUE_CAP) cb = malloc(sizeof(cb_t) + (size_t)len);
    if (!cb) {
        hub->qdropped++;
        pthread_mutex_unlock(&hub->qmu);
        return 0;
    }
    cb->next = NULL;
    cb->slot = slot;
    cb->gen = gen;
    cb->side = side;
    cb->kind = kind;
    cb->addr = *addr;
    cb->len = len;
    if (len) memcpy(cb->data, data, (size_t)len);
    if (hub->qtail) hub->qtail->next = cb;
    else hub->qhead = cb;
    hub->qtail = cb;
    hub->qlen++;
    pthread_mutex_unlock(&hub->qmu);
    return 1;
}

/* Drains one side of one relay: receive a batch, process in place, send the batch. Called
 * under the hub's lock, by its worker (no GIL) or by poll (GIL held): no Python in here.
 * Returns 1 if callbacks were queued. */
static int pump_side(HubObject *hub, RelayObject *r, int s, uint32_t slot, uint32_t gen) {
    side_t *in = &r->side[s], *out = &r->side[!s];
    const plan_t *p = r->plan ? r->plan : &EMPTY_PLAN;
    /* callbacks are only looked at (set or not) here; the loop thread may change them */
    PyObject *on_stun = __atomic_load_n(&r->on_stun, __ATOMIC_RELAXED);
    PyObject *on_latch = __atomic_load_n(&r->on_latch, __ATOMIC_RELAXED);
    int queued = 0;
    /* at most PUMP_BATCHES batches, then the next ready socket (epoll reports this one
     * again): fair to the other relays, and the lock is held for a bounded time */
    for (int round = 0; round < PUMP_BATCHES; round++) {
        if (in->fd < 0) break;
        /* the receive headers point at fixed buffers (set up once, Hub_new); only what the
         * kernel wrote into the last batch's entries is reset */
        for (int i = 0; i < hub->dirty; i++) {
            struct msghdr *h = &hub->in[i].msg_hdr;
            h->msg_namelen = sizeof(hub->src[i]);
            h->msg_controllen = hub->timestamps ? sizeof(hub->ctl[i]) : 0;
            h->msg_flags = 0;
        }
        hub->dirty = 0;
        int n = recvmmsg(in->fd, hub->in, BATCH, MSG_DONTWAIT, NULL);
        if (n > 0) hub->dirty = n;
        if (n <= 0) {
            if (n < 0 && errno == ECONNREFUSED) continue;  /* an ICMP error: next packets */
            break;
        }
        int64_t now = mono_ns();
        int k = 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &hub->in[i].msg_hdr;
            int len = (int)hub->in[i].msg_len;
            if (h->msg_flags & MSG_TRUNC) len = BUF_SIZE + 1;
            const addr_t *dest = NULL;
            int v = process(r, p, s, hub->bufs[i], &len, &hub->src[i], now, &dest);
            in->verdicts[v]++;
            if (v == V_STUN) {
                if (on_stun && on_stun != Py_None)
                    queued |= queue_push(hub, slot, gen, s, CB_STUN, &hub->src[i],
                                         hub->bufs[i], len);
                continue;
            }
            if (v != V_FORWARD) continue;
            if (hub->timestamps) {
                hub->rx_ts[k].tv_sec = 0;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
                    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS)
                        memcpy(&hub->rx_ts[k], CMSG_DATA(c), sizeof(struct timespec));
            }
            set_out_msg(&hub->out[k], &hub->iov_out[k], hub->bufs[i], (size_t)len, &dest->ss,
                        dest->len);
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
        if (in->latch_changed) {
            in->latch_changed = 0;
            if (in->latched.valid && on_latch && on_latch != Py_None)
                queued |= queue_push(hub, slot, gen, s, CB_LATCH, &in->latched.ss, NULL, 0);
        }
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
        if (n < BATCH) break;
    }
    return queued;
}

/* One ready socket: pumped under the lock if its relay is still registered. */
static int hub_event(HubObject *hub, uint64_t tag) {
    uint32_t slot = (uint32_t)(tag & 0xffffffffu) >> 1, gen = (uint32_t)(tag >> 32);
    int queued = 0;
    pthread_mutex_lock(&hub->mu);
    RelayObject *r = slot_relay(hub, slot, gen);
    if (r) queued = pump_side(hub, r, (int)(tag & 1), slot, gen);
    pthread_mutex_unlock(&hub->mu);
    return queued;
}

static void drain_fd(int fd) {
    uint64_t v;
    ssize_t got = read(fd, &v, sizeof(v));
    (void)got;   /* EAGAIN: nothing was due */
}

/* Runs the queued callbacks (GIL held, on the polling thread). Returns how many ran. */
static int hub_deliver(HubObject *hub) {
    if (!hub->ready) return 0;
    if (hub->own_notify) drain_fd(hub->notify_fd);
    pthread_mutex_lock(&hub->qmu);
    cb_t *cb = hub->qhead;
    hub->qhead = hub->qtail = NULL;
    hub->qlen = 0;
    pthread_mutex_unlock(&hub->qmu);
    int ran = 0;
    while (cb) {
        cb_t *next = cb->next;
        /* slots change only with the GIL held, which this thread has */
        RelayObject *r = slot_relay(hub, cb->slot, cb->gen);
        PyObject *fn = r ? (cb->kind == CB_STUN ? r->on_stun : r->on_latch) : NULL;
        if (fn && fn != Py_None) {
            Py_INCREF(r);   /* the callback may close and drop it */
            Py_INCREF(fn);
            PyObject *addr = addr_to_py(&cb->addr), *res = NULL;
            if (addr && cb->kind == CB_STUN)
                res = PyObject_CallFunction(fn, "iy#N", cb->side, (const char *)cb->data,
                                            (Py_ssize_t)cb->len, addr);
            else if (addr)
                res = PyObject_CallFunction(fn, "iN", cb->side, addr);
            if (!res) PyErr_WriteUnraisable(fn);
            Py_XDECREF(res);
            Py_DECREF(fn);
            Py_DECREF(r);
            ran++;
        }
        free(cb);
        cb = next;
    }
    return ran;
}

static void *hub_worker(void *arg) {
    HubObject *hub = arg;
    struct epoll_event evs[128];
    struct timespec nap = {0, (long)hub->coalesce_us * 1000L};
    while (!__atomic_load_n(&hub->stopping, __ATOMIC_ACQUIRE)) {
        int n = epoll_wait(hub->epfd, evs, 128, -1);
        int queued = 0;
        __atomic_add_fetch(&hub->rounds, 1, __ATOMIC_RELAXED);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == WAKE_TAG) drain_fd(hub->wake_fd);
            else queued |= hub_event(hub, evs[i].data.u64);
        }
        if (queued) {
            uint64_t one = 1;
            ssize_t put = write(hub->notify_fd, &one, sizeof(one));
            (void)put;   /* EAGAIN: the counter is full, the loop is woken anyway */
        }
        /* interrupt mitigation, as a NIC's: after a round that found several sockets ready
         * (steady traffic), nap before waiting again, so that the packets arriving meanwhile
         * are taken in one round instead of each waking this thread (a wake-up costs more
         * than relaying a packet, most of all in a VM); a quiet hub (one ready socket) waits
         * at once, so light traffic gets no added delay */
        if (nap.tv_nsec && n > 1) nanosleep(&nap, NULL);
    }
    return NULL;
}

/* One epoll round on the calling thread: wait up to timeout_ms, pump every ready side, then
 * run the callbacks queued meanwhile. Returns events handled. */
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
    for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == WAKE_TAG) drain_fd(self->wake_fd);
        else hub_event(self, evs[i].data.u64);
    }
    hub_deliver(self);
    return n < 0 ? 0 : n;
}

static PyObject *Hub_poll(HubObject *self, PyObject *args) {
    int timeout_ms = 0;
    if (!PyArg_ParseTuple(args, "|i", &timeout_ms)) return NULL;
    if (self->running) return PyLong_FromLong(hub_deliver(self));  /* the worker pumps */
    return PyLong_FromLong(hub_round(self, timeout_ms, timeout_ms != 0));
}

static PyObject *Hub_deliver(HubObject *self, PyObject *unused) {
    return PyLong_FromLong(hub_deliver(self));
}

static PyObject *Hub_run(HubObject *self, PyObject *args) {
    double seconds;
    if (!PyArg_ParseTuple(args, "d", &seconds)) return NULL;
    int64_t end = mono_ns() + (int64_t)(seconds * 1e9);
    while (mono_ns() < end) {
        if (self->running) {   /* the worker pumps; this thread runs the callbacks */
            struct pollfd pfd = {.fd = self->notify_fd, .events = POLLIN};
            Py_BEGIN_ALLOW_THREADS
            poll(&pfd, 1, 20);
            Py_END_ALLOW_THREADS
            if (!self->own_notify) drain_fd(self->notify_fd);
            hub_deliver(self);
        } else {
            hub_round(self, 20, 1);
        }
        if (PyErr_CheckSignals() < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Hub_start(HubObject *self, PyObject *unused) {
    if (self->running) Py_RETURN_NONE;
    if (!self->relays) return PyErr_Format(PyExc_ValueError, "hub cleared");
    __atomic_store_n(&self->stopping, 0, __ATOMIC_RELEASE);
    /* signals stay with Python's threads: the worker blocks them all */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = pthread_create(&self->thread, NULL, hub_worker, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->owner = getpid();
    self->running = 1;
    Py_RETURN_NONE;
}

static void hub_stop(HubObject *self) {
    if (!self->running) return;
    if (self->owner != getpid()) {   /* a forked child: the worker was not copied */
        self->running = 0;
        return;
    }
    __atomic_store_n(&self->stopping, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t put = write(self->wake_fd, &one, sizeof(one));
    (void)put;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->running = 0;
}

static PyObject *Hub_stop(HubObject *self, PyObject *unused) {
    hub_stop(self);
    Py_RETURN_NONE;
}

static PyObject *Hub_fileno(HubObject *self, PyObject *unused) {
    return PyLong_FromLong(self->epfd);
}

static PyObject *Hub_notify_fileno(HubObject *self, PyObject *unused) {
    return PyLong_FromLong(self->notify_fd);
}

static PyObject *Hub_size(HubObject *self, PyObject *unused) {
    return PyLong_FromSsize_t(self->count);
}

static PyObject *Hub_latency(HubObject *self, PyObject *args) {
    int reset = 0;
    if (!PyArg_ParseTuple(args, "|p", &reset)) return NULL;
    uint32_t *copy = PyMem_Malloc(sizeof(uint32_t) * (LAT_BUCKETS + 1));
    if (!copy) return PyErr_NoMemory();
    pthread_mutex_lock(&self->mu);
    memcpy(copy, self->lat, sizeof(uint32_t) * (LAT_BUCKETS + 1));
    if (reset) memset(self->lat, 0, sizeof(uint32_t) * (LAT_BUCKETS + 1));
    pthread_mutex_unlock(&self->mu);
    PyObject *list = PyList_New(LAT_BUCKETS + 1);
    for (int i = 0; list && i <= LAT_BUCKETS; i++) {
        PyObject *v = PyLong_FromUnsignedLong(copy[i]);
        if (!v) Py_CLEAR(list);
        else PyList_SET_ITEM(list, i, v);
    }
    PyMem_Free(copy);
    return list;
}

static PyObject *Hub_stats(HubObject *self, PyObject *unused) {
    pthread_mutex_lock(&self->mu);
    uint64_t batches = self->batches, packets = self->packets;
    pthread_mutex_unlock(&self->mu);
    pthread_mutex_lock(&self->qmu);
    uint64_t dropped = self->qdropped;
    pthread_mutex_unlock(&self->qmu);
    return Py_BuildValue("{sKsKsnsKsisK}", "batches", batches, "packets", packets, "relays",
                         self->count, "callbacks_dropped", dropped, "threaded", self->running,
                         "rounds", __atomic_load_n(&self->rounds, __ATOMIC_RELAXED));
}

static PyObject *Hub_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"timestamps", "rcvbuf", "notify_fd", "coalesce_us", NULL};
    int timestamps = 0, rcvbuf = 0, notify_fd = -1, coalesce_us = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|piii", names, &timestamps, &rcvbuf, &notify_fd,
                                     &coalesce_us))
        return NULL;
    if (coalesce_us < 0 || coalesce_us > 999999) {
        PyErr_SetString(PyExc_ValueError, "coalesce_us must be 0..999999");
        return NULL;
    }
    HubObject *self = (HubObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->wake_fd = self->notify_fd = -1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->timestamps = timestamps;
    self->rcvbuf = rcvbuf;
    self->coalesce_us = coalesce_us;
    self->relays = PySet_New(NULL);
    self->bufs = PyMem_Calloc(BATCH, BUF_SIZE);
    self->lat = PyMem_Calloc(LAT_BUCKETS + 1, sizeof(uint32_t));
    pthread_mutex_init(&self->mu, NULL);
    pthread_mutex_init(&self->qmu, NULL);
    self->ready = 1;
    for (int i = 0; self->bufs && i < BATCH; i++) {
        self->iov_in[i].iov_base = self->bufs[i];
        self->iov_in[i].iov_len = BUF_SIZE;
        struct msghdr *h = &self->in[i].msg_hdr;
        h->msg_name = &self->src[i];
        h->msg_iov = &self->iov_in[i];
        h->msg_iovlen = 1;
        h->msg_control = timestamps ? self->ctl[i] : NULL;
    }
    self->dirty = BATCH;
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (notify_fd >= 0) {
        self->notify_fd = notify_fd;   /* shared by a pool of hubs, owned by its creator */
    } else {
        self->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        self->own_notify = 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    int no_fd = self->epfd < 0 || self->wake_fd < 0 || self->notify_fd < 0 ||
                epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->wake_fd, &ev) < 0;
    if (no_fd || !self->relays || !self->bufs || !self->lat) {
        Py_DECREF(self);
        return no_fd ? PyErr_SetFromErrno(PyExc_OSError) : PyErr_NoMemory();
    }
    return (PyObject *)self;
}

/* Stops the worker and lets every relay go (dealloc and the GC's clear). */
static void hub_detach_all(HubObject *self) {
    hub_stop(self);
    if (!self->ready) return;
    pthread_mutex_lock(&self->mu);
    for (uint32_t i = 0; i < self->nslots; i++) {
        RelayObject *r = self->slots[i].relay;
        if (!r) continue;
        for (int j = 0; j < 2; j++)
            if (r->side[j].fd >= 0) epoll_ctl(self->epfd, EPOLL_CTL_DEL, r->side[j].fd, NULL);
        r->hub = NULL;
        self->slots[i].relay = NULL;
        self->slots[i].gen = 0;
    }
    pthread_mutex_unlock(&self->mu);
    self->count = 0;
}

static void Hub_dealloc(HubObject *self) {
    PyObject_GC_UnTrack(self);
    hub_detach_all(self);
    Py_CLEAR(self->relays);
    if (self->epfd >= 0) close(self->epfd);
    if (self->wake_fd >= 0) close(self->wake_fd);
    if (self->own_notify && self->notify_fd >= 0) close(self->notify_fd);
    for (cb_t *cb = self->qhead, *next; cb; cb = next) {
        next = cb->next;
        free(cb);
    }
    if (self->ready) {
        pthread_mutex_destroy(&self->mu);
        pthread_mutex_destroy(&self->qmu);
    }
    PyMem_Free(self->slots);
    PyMem_Free(self->bufs);
    PyMem_Free(self->lat);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Hub_traverse(HubObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->relays);
    return 0;
}

static int Hub_clear(HubObject *self) {
    hub_detach_all(self);
    Py_CLEAR(self->relays);
    return 0;
}

static PyMethodDef Hub_methods[] = {
    {"register", (PyCFunction)Hub_register, METH_O, "register(relay): poll its sockets"},
    {"unregister", (PyCFunction)Hub_unregister, METH_O, "unregister(relay)"},
    {"poll", (PyCFunction)Hub_poll, METH_VARARGS,
     "poll(timeout_ms=0) -> events: pump every ready socket once, then run the queued "
     "callbacks (started: only run the callbacks)"},
    {"deliver", (PyCFunction)Hub_deliver, METH_NOARGS,
     "deliver() -> n: run the callbacks queued by the packet path"},
    {"run", (PyCFunction)Hub_run, METH_VARARGS,
     "run(seconds): pump until the time is up (GIL released while waiting)"},
    {"start", (PyCFunction)Hub_start, METH_NOARGS,
     "start(): a worker thread pumps from now on (no GIL); poll() only runs callbacks"},
    {"stop", (PyCFunction)Hub_stop, METH_NOARGS, "stop(): the worker thread ends (joined)"},
    {"fileno", (PyCFunction)Hub_fileno, METH_NOARGS, "the epoll fd (readable when work)"},
    {"notify_fileno", (PyCFunction)Hub_notify_fileno, METH_NOARGS,
     "the eventfd a worker writes when it queued callbacks"},
    {"size", (PyCFunction)Hub_size, METH_NOARGS, "relays registered"},
    {"latency", (PyCFunction)Hub_latency, METH_VARARGS,
     "latency(reset=False) -> receive-to-send histogram, 1 us buckets, last = overflow"},
    {"stats", (PyCFunction)Hub_stats, METH_NOARGS,
     "batches, packets, relays, callbacks_dropped, threaded"},
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
