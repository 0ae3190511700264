/* The TURN relay's batched UDP path for bound channels (RFC 8656 §12).
 *
 * A Hub polls the UDP listeners and the UDP relay sockets with one epoll set (its fd is what
 * the asyncio loop watches), receives in batches (recvmmsg) and sends in batches (sendmmsg).
 * It forwards only what the sans-IO core published for a relay (turn.core's forwarding
 * table: channel <-> peer with the time the core's own checks stop allowing it):
 *   listener, ChannelData from the allocation's client on a published channel, in time
 *       -> the payload from the relay socket to the channel's peer;
 *   relay, a datagram from a published channel's peer, in time
 *       -> ChannelData from the listener to the client.
 * Everything else (STUN, Send/Data indications, unknown or expired channels, MS-TURN) goes up
 * to Python unchanged through the socket's on_datagram(data, (host, port)) callback, where the
 * core decides as before. No Python frame and no allocation per forwarded packet.
 *
 * turn/fastpath.py holds the pure-Python twin with the same interface and rules: the oracle of
 * the tests. Hand-written (no Cython) to keep the build to gcc + the Python headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "udp_common.h"

#define BATCH 32
#define HEAD 4                   /* room for a ChannelData header in front of a peer datagram */
#define BUF_SIZE 65536           /* any UDP datagram */
#define MAX_ENTRIES 64           /* published channels per relay (more: Python path) */
#define BUCKETS 4096             /* listener's relays by client address */
#define EVENTS 64
#define ROUNDS 8                 /* batches per socket per poll: a flood cannot starve the loop */

enum { KIND_LISTENER = 1, KIND_RELAY = 2 };

typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
} addr_t;

typedef struct {
    uint16_t channel;
    addr_t peer;
    int64_t expires_ns;          /* CLOCK_MONOTONIC: forwarded while now < expires */
} entry_t;

typedef struct HubObject HubObject;

/* The head shared by Listener and Relay (the epoll tag points at it). */
#define SOCK_HEAD         \
    PyObject_HEAD         \
    int kind;             \
    int fd;               \
    PyObject *sock;       \
    PyObject *on_datagram;\
    HubObject *hub;       /* NULL once closed */

typedef struct {
    SOCK_HEAD
} SockObject;

typedef struct RelayObject RelayObject;

typedef struct {
    SOCK_HEAD
    RelayObject **buckets;       /* borrowed: a relay unlinks itself when closed */
} ListenerObject;

struct RelayObject {
    SOCK_HEAD
    ListenerObject *listener;    /* strong */
    addr_t client;
    entry_t entries[MAX_ENTRIES];
    int n_entries;
    int linked;
    RelayObject *next;           /* listener bucket chain */
};

struct HubObject {
    PyObject_HEAD
    int epfd;
    PyObject *members;           /* set: strong refs to every registered socket object */
    PyObject *on_unsent;         /* on_unsent(fd, data, (host, port)) for EAGAIN, or None */
    uint8_t *bufs;               /* BATCH x (HEAD + BUF_SIZE) */
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov_in[BATCH], iov_out[BATCH];
    struct sockaddr_storage src[BATCH];
    int out_fd[BATCH];
    int n_out;
    uint64_t to_peer_packets, to_peer_bytes, to_client_packets, to_client_bytes;
    uint64_t fast, slow, batches, unsent, send_errors;
};

static PyTypeObject HubType, ListenerType, RelayType;

/* -- addresses --------------------------------------------------------------------------- */

static int parse_addr(const char *host, int port, addr_t *out) {
    memset(out, 0, sizeof(*out));
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "bad port %d", port);
        return -1;
    }
    return sockaddr_from_host(host, port, &out->ss, &out->len);
}

static int addr_eq(const addr_t *a, const struct sockaddr_storage *ss) {
    return sockaddr_eq(&a->ss, ss);
}

static unsigned addr_hash(const struct sockaddr_storage *ss) {
    uint32_t h = 2166136261u;
    const uint8_t *p;
    size_t n;
    uint16_t port;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const void *)ss;
        p = (const uint8_t *)&v4->sin_addr;
        n = 4;
        port = v4->sin_port;
    } else {
        const struct sockaddr_in6 *v6 = (const void *)ss;
        p = (const uint8_t *)&v6->sin6_addr;
        n = 16;
        port = v6->sin6_port;
    }
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    h = (h ^ (port & 0xFF)) * 16777619u;
    h = (h ^ (port >> 8)) * 16777619u;
    return h % BUCKETS;
}

/* -- registration ------------------------------------------------------------------------ */

static int sock_register(HubObject *hub, SockObject *s, PyObject *sock, PyObject *on_datagram) {
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0) return -1;
    if (!PyCallable_Check(on_datagram)) {
        PyErr_SetString(PyExc_TypeError, "on_datagram must be callable");
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (PySet_Add(hub->members, (PyObject *)s) < 0) {
        epoll_ctl(hub->epfd, EPOLL_CTL_DEL, fd, NULL);
        return -1;
    }
    s->fd = fd;
    Py_INCREF(sock);
    s->sock = sock;
    Py_INCREF(on_datagram);
    s->on_datagram = on_datagram;
    Py_INCREF(hub);
    s->hub = hub;
    return 0;
}

static void relay_unlink(RelayObject *r) {
    if (!r->linked) return;
    RelayObject **p = &r->listener->buckets[addr_hash(&r->client.ss)];
    while (*p && *p != r) p = &(*p)->next;
    if (*p) *p = r->next;
    r->next = NULL;
    r->linked = 0;
}

/* Unregisters (the socket itself stays open: its Python owner closes it). */
static void sock_close(SockObject *s) {
    HubObject *hub = s->hub;
    if (!hub) return;
    if (s->kind == KIND_RELAY) relay_unlink((RelayObject *)s);
    epoll_ctl(hub->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    s->fd = -1;
    s->hub = NULL;
    /* members is NULL once the hub was cleared by the cycle collector */
    if (hub->members && PySet_Discard(hub->members, (PyObject *)s) < 0) PyErr_Clear();
    Py_DECREF(hub);
}

/* -- the packet path --------------------------------------------------------------------- */

static void queue_out(HubObject *hub, int fd, const addr_t *to, uint8_t *data, size_t len) {
    int k = hub->n_out++;
    hub->out_fd[k] = fd;
    set_out_msg(&hub->out[k], &hub->iov_out[k], data, len, &to->ss, to->len);
}

static void give_unsent(HubObject *hub, int from, int to) {
    for (int i = from; i < to; i++) {
        hub->unsent++;
        if (!hub->on_unsent || hub->on_unsent == Py_None) continue;
        struct msghdr *o = &hub->out[i].msg_hdr;
        PyObject *addr = addr_to_py((const struct sockaddr_storage *)o->msg_name);
        PyObject *res = addr ? PyObject_CallFunction(
            hub->on_unsent, "iy#N", hub->out_fd[i], (const char *)hub->iov_out[i].iov_base,
            (Py_ssize_t)hub->iov_out[i].iov_len, addr) : NULL;
        if (!res) PyErr_WriteUnraisable(hub->on_unsent);
        Py_XDECREF(res);
    }
}

/* Sends what is queued, one sendmmsg per run of datagrams leaving by the same socket. A full
 * socket buffer hands the rest of the run to on_unsent (Python queues it, as a transport
 * would); any other refusal (an ICMP error, a size) drops that one datagram. */
static void flush(HubObject *hub) {
    int k = hub->n_out, i = 0;
    while (i < k) {
        int fd = hub->out_fd[i], j = i + 1;
        while (j < k && hub->out_fd[j] == fd) j++;
        int sent = i;
        while (sent < j) {
            int m = sendmmsg(fd, hub->out + sent, (unsigned)(j - sent), MSG_DONTWAIT);
            if (m > 0) {
                sent += m;
                continue;
            }
            if (m < 0 && errno == EINTR) continue;
            if (m < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
                give_unsent(hub, sent, j);
                break;
            }
            hub->send_errors++;
            sent++;
        }
        i = j;
    }
    hub->n_out = 0;
}

static RelayObject *find_relay(ListenerObject *l, const struct sockaddr_storage *client) {
    for (RelayObject *r = l->buckets[addr_hash(client)]; r; r = r->next)
        if (addr_eq(&r->client, client)) return r;
    return NULL;
}

/* ChannelData from a client: 1 when queued for the peer, 0 for the Python path. */
static int from_client(HubObject *hub, ListenerObject *l, uint8_t *d, size_t len,
                       const struct sockaddr_storage *src, int64_t now) {
    if (len < 4 || d[0] < 0x40 || d[0] >= 0x80) return 0;
    RelayObject *r = find_relay(l, src);
    if (!r) return 0;
    uint16_t channel = (uint16_t)(d[0] << 8 | d[1]);
    size_t length = (size_t)(d[2] << 8 | d[3]);
    if (len < 4 + length) return 0;
    for (int i = 0; i < r->n_entries; i++) {
        entry_t *e = &r->entries[i];
        if (e->channel != channel) continue;
        if (now >= e->expires_ns) return 0;
        queue_out(hub, r->fd, &e->peer, d + 4, length);
        hub->to_peer_packets++;
        hub->to_peer_bytes += length;
        return 1;
    }
    return 0;
}

/* A datagram at a relay from a peer: 1 when queued as ChannelData to the client. */
static int from_peer(HubObject *hub, RelayObject *r, uint8_t *d, size_t len,
                     const struct sockaddr_storage *src, int64_t now) {
    if (!r->listener->hub || len > 0xFFFF) return 0;
    for (int i = 0; i < r->n_entries; i++) {
        entry_t *e = &r->entries[i];
        if (!addr_eq(&e->peer, src)) continue;
        if (now >= e->expires_ns) return 0;
        uint8_t *frame = d - HEAD;     /* the header goes in the room left in front */
        frame[0] = (uint8_t)(e->channel >> 8);
        frame[1] = (uint8_t)e->channel;
        frame[2] = (uint8_t)(len >> 8);
        frame[3] = (uint8_t)len;
        queue_out(hub, r->listener->fd, &r->client, frame, len + HEAD);
        hub->to_client_packets++;
        hub->to_client_bytes += len;
        return 1;
    }
    return 0;
}

static void slow(SockObject *s, const uint8_t *d, size_t len,
                 const struct sockaddr_storage *src) {
    PyObject *addr = addr_to_py(src);
    PyObject *res = addr ? PyObject_CallFunction(s->on_datagram, "y#N", (const char *)d,
                                                 (Py_ssize_t)len, addr) : NULL;
    if (!res) PyErr_WriteUnraisable(s->on_datagram);  /* a socket survives its callback */
    Py_XDECREF(res);
}

/* Drains one socket; returns datagrams received. Called with the GIL held. */
static long pump(HubObject *hub, SockObject *s, int64_t now) {
    long total = 0;
    for (int round = 0; round < ROUNDS; round++) {
        if (!s->hub) return total;    /* closed by a callback */
        for (int i = 0; i < BATCH; i++) {
            hub->iov_in[i].iov_base = hub->bufs + (size_t)i * (HEAD + BUF_SIZE) + HEAD;
            hub->iov_in[i].iov_len = BUF_SIZE;
            struct msghdr *h = &hub->in[i].msg_hdr;
            memset(h, 0, sizeof(*h));
            h->msg_name = &hub->src[i];
            h->msg_namelen = sizeof(hub->src[i]);
            h->msg_iov = &hub->iov_in[i];
            h->msg_iovlen = 1;
        }
        int n = recvmmsg(s->fd, hub->in, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0 && (errno == EINTR || errno == ECONNREFUSED)) continue;
        if (n <= 0) return total;
        total += n;
        hub->batches++;
        for (int i = 0; i < n && s->hub; i++) {
            uint8_t *d = hub->iov_in[i].iov_base;
            size_t len = hub->in[i].msg_len;
            int done = s->kind == KIND_LISTENER
                ? from_client(hub, (ListenerObject *)s, d, len, &hub->src[i], now)
                : from_peer(hub, (RelayObject *)s, d, len, &hub->src[i], now);
            if (done) {
                hub->fast++;
                continue;
            }
            hub->slow++;
            flush(hub);               /* keep order; a callback may republish or close */
            slow(s, d, len, &hub->src[i]);
        }
        flush(hub);
        if (n < BATCH) return total;
    }
    return total;                 /* more is waiting: the socket stays ready for the next poll */
}

/* -- Hub --------------------------------------------------------------------------------- */

static PyObject *Hub_poll(HubObject *self, PyObject *args) {
    PyObject *now_obj = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &now_obj)) return NULL;
    int64_t now;
    if (now_obj == Py_None) {
        now = mono_ns();
    } else {
        double seconds = PyFloat_AsDouble(now_obj);
        if (seconds == -1.0 && PyErr_Occurred()) return NULL;
        now = (int64_t)(seconds * 1e9);
    }
    struct epoll_event evs[EVENTS];
    int n = epoll_wait(self->epfd, evs, EVENTS, 0);
    if (n < 0) return PyLong_FromLong(0);
    /* every socket of this round is held until its end: a callback may close any of them */
    SockObject *held[EVENTS];
    for (int i = 0; i < n; i++) {
        held[i] = evs[i].data.ptr;
        Py_INCREF(held[i]);
    }
    long total = 0;
    for (int i = 0; i < n; i++) total += pump(self, held[i], now);
    for (int i = 0; i < n; i++) Py_DECREF(held[i]);
    return PyLong_FromLong(total);
}

static PyObject *Hub_listener(HubObject *self, PyObject *args) {
    PyObject *sock, *cb;
    if (!PyArg_ParseTuple(args, "OO", &sock, &cb)) return NULL;
    ListenerObject *l = PyObject_GC_New(ListenerObject, &ListenerType);
    if (!l) return NULL;
    l->kind = KIND_LISTENER;
    l->fd = -1;
    l->sock = l->on_datagram = NULL;
    l->hub = NULL;
    l->buckets = PyMem_Calloc(BUCKETS, sizeof(RelayObject *));
    PyObject_GC_Track(l);
    if (!l->buckets) {
        Py_DECREF(l);
        return PyErr_NoMemory();
    }
    if (sock_register(self, (SockObject *)l, sock, cb) < 0) {
        Py_DECREF(l);
        return NULL;
    }
    return (PyObject *)l;
}

static PyObject *Hub_relay(HubObject *self, PyObject *args) {
    PyObject *sock, *listener, *cb;
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "OO!(si)O", &sock, &ListenerType, &listener, &host, &port, &cb))
        return NULL;
    ListenerObject *l = (ListenerObject *)listener;
    if (l->hub != self) return PyErr_Format(PyExc_ValueError, "not a listener of this hub");
    RelayObject *r = PyObject_GC_New(RelayObject, &RelayType);
    if (!r) return NULL;
    r->kind = KIND_RELAY;
    r->fd = -1;
    r->sock = r->on_datagram = NULL;
    r->hub = NULL;
    r->n_entries = 0;
    r->linked = 0;
    r->next = NULL;
    Py_INCREF(l);
    r->listener = l;
    PyObject_GC_Track(r);
    if (parse_addr(host, port, &r->client) < 0 ||
        sock_register(self, (SockObject *)r, sock, cb) < 0) {
        Py_DECREF(r);
        return NULL;
    }
    /* one relay per client 5-tuple (the core's rule); a stale one is replaced */
    RelayObject *old = find_relay(l, &r->client.ss);
    if (old) relay_unlink(old);
    RelayObject **head = &l->buckets[addr_hash(&r->client.ss)];
    r->next = *head;
    *head = r;
    r->linked = 1;
    return (PyObject *)r;
}

static PyObject *Hub_fileno(HubObject *self, PyObject *unused) {
    return PyLong_FromLong(self->epfd);
}

static PyObject *Hub_take_counters(HubObject *self, PyObject *unused) {
    PyObject *t = Py_BuildValue("(KKKK)", self->to_peer_packets, self->to_peer_bytes,
                                self->to_client_packets, self->to_client_bytes);
    self->to_peer_packets = self->to_peer_bytes = 0;
    self->to_client_packets = self->to_client_bytes = 0;
    return t;
}

static PyObject *Hub_stats(HubObject *self, PyObject *unused) {
    return Py_BuildValue("{sKsKsKsKsKsn}", "fast", self->fast, "slow", self->slow, "batches",
                         self->batches, "unsent", self->unsent, "send_errors",
                         self->send_errors, "sockets",
                         self->members ? PySet_GET_SIZE(self->members) : (Py_ssize_t)0);
}

static PyObject *Hub_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"on_unsent", NULL};
    PyObject *on_unsent = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", names, &on_unsent)) return NULL;
    HubObject *self = (HubObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    Py_INCREF(on_unsent);
    self->on_unsent = on_unsent;
    self->members = PySet_New(NULL);
    self->bufs = PyMem_Calloc(BATCH, HEAD + BUF_SIZE);
    if (self->epfd < 0 || !self->members || !self->bufs) {
        int no_fd = self->epfd < 0;
        Py_DECREF(self);
        return no_fd ? PyErr_SetFromErrno(PyExc_OSError) : PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static int Hub_traverse(HubObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->members);
    Py_VISIT(self->on_unsent);
    return 0;
}

static int Hub_clear(HubObject *self) {
    Py_CLEAR(self->members);
    Py_CLEAR(self->on_unsent);
    return 0;
}

static void Hub_dealloc(HubObject *self) {
    PyObject_GC_UnTrack(self);
    Hub_clear(self);
    if (self->epfd >= 0) close(self->epfd);
    PyMem_Free(self->bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Hub_methods[] = {
    {"poll", (PyCFunction)Hub_poll, METH_VARARGS,
     "poll(now=None) -> datagrams: drain every ready socket once (now: CLOCK_MONOTONIC s)"},
    {"listener", (PyCFunction)Hub_listener, METH_VARARGS,
     "listener(sock, on_datagram) -> Listener: a TURN UDP listener socket"},
    {"relay", (PyCFunction)Hub_relay, METH_VARARGS,
     "relay(sock, listener, (client_host, client_port), on_datagram) -> Relay"},
    {"fileno", (PyCFunction)Hub_fileno, METH_NOARGS, "the epoll fd (readable when work)"},
    {"take_counters", (PyCFunction)Hub_take_counters, METH_NOARGS,
     "(packets_to_peer, bytes_to_peer, packets_to_client, bytes_to_client) since last"},
    {"stats", (PyCFunction)Hub_stats, METH_NOARGS, "fast, slow, batches, unsent, ..."},
    {NULL}};

static PyTypeObject HubType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turn.fastpath_native._fastpath.Hub",
    .tp_basicsize = sizeof(HubObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Hub_new,
    .tp_dealloc = (destructor)Hub_dealloc,
    .tp_traverse = (traverseproc)Hub_traverse,
    .tp_clear = (inquiry)Hub_clear,
    .tp_methods = Hub_methods,
};

/* -- Listener and Relay ------------------------------------------------------------------ */

static PyObject *Sock_close(SockObject *self, PyObject *unused) {
    sock_close(self);
    Py_RETURN_NONE;
}

static int Sock_traverse(SockObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->sock);
    Py_VISIT(self->on_datagram);
    Py_VISIT((PyObject *)self->hub);
    if (self->kind == KIND_RELAY) Py_VISIT((PyObject *)((RelayObject *)self)->listener);
    return 0;
}

static int Sock_clear(SockObject *self) {
    sock_close(self);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->on_datagram);
    if (self->kind == KIND_RELAY) Py_CLEAR(((RelayObject *)self)->listener);
    return 0;
}

static void Sock_dealloc(SockObject *self) {
    PyObject_GC_UnTrack(self);
    Sock_clear(self);
    if (self->kind == KIND_LISTENER) {
        /* relays still linked to it hold it strongly, so none is left here */
        PyMem_Free(((ListenerObject *)self)->buckets);
    }
    PyObject_GC_Del(self);
}

static PyObject *Sock_closed(SockObject *self, void *unused) {
    return PyBool_FromLong(self->hub == NULL);
}

static PyGetSetDef Sock_getset[] = {
    {"closed", (getter)Sock_closed, NULL, "unregistered from its hub", NULL}, {NULL}};

static PyObject *Relay_publish(RelayObject *self, PyObject *arg) {
    /* [(channel, host, port, expires_monotonic_s), ...]: replaces the table; the entries past
     * MAX_ENTRIES are left out (their packets take the Python path) */
    PyObject *seq = PySequence_Fast(arg, "publish takes a sequence of entries");
    if (!seq) return NULL;
    entry_t fresh[MAX_ENTRIES];
    int n = 0;
    Py_ssize_t size = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < size && n < MAX_ENTRIES; i++) {
        int channel, port;
        const char *host;
        double expires;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "isid;entry",
                              &channel, &host, &port, &expires)) {
            Py_DECREF(seq);
            return NULL;
        }
        if (channel < 0x4000 || channel > 0x7FFF) {
            Py_DECREF(seq);
            return PyErr_Format(PyExc_ValueError, "channel 0x%x out of range", channel);
        }
        if (parse_addr(host, port, &fresh[n].peer) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        fresh[n].channel = (uint16_t)channel;
        fresh[n].expires_ns = (int64_t)(expires * 1e9);
        n++;
    }
    Py_DECREF(seq);
    memcpy(self->entries, fresh, sizeof(entry_t) * (size_t)n);
    self->n_entries = n;
    Py_RETURN_NONE;
}

static PyMethodDef Listener_methods[] = {
    {"close", (PyCFunction)Sock_close, METH_NOARGS, "unregister (the socket stays open)"},
    {NULL}};

static PyMethodDef Relay_methods[] = {
    {"close", (PyCFunction)Sock_close, METH_NOARGS, "unregister (the socket stays open)"},
    {"publish", (PyCFunction)Relay_publish, METH_O,
     "publish([(channel, host, port, expires), ...]): the channels to forward, until when"},
    {NULL}};

static PyTypeObject ListenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turn.fastpath_native._fastpath.Listener",
    .tp_basicsize = sizeof(ListenerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)Sock_dealloc,
    .tp_traverse = (traverseproc)Sock_traverse,
    .tp_clear = (inquiry)Sock_clear,
    .tp_methods = Listener_methods,
    .tp_getset = Sock_getset,
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turn.fastpath_native._fastpath.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)Sock_dealloc,
    .tp_traverse = (traverseproc)Sock_traverse,
    .tp_clear = (inquiry)Sock_clear,
    .tp_methods = Relay_methods,
    .tp_getset = Sock_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The TURN relay's batched UDP path for bound channels.",
    -1, NULL};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&HubType) < 0 || PyType_Ready(&ListenerType) < 0 ||
        PyType_Ready(&RelayType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&HubType);
    Py_INCREF(&ListenerType);
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Hub", (PyObject *)&HubType) < 0 ||
        PyModule_AddObject(m, "Listener", (PyObject *)&ListenerType) < 0 ||
        PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ENTRIES", MAX_ENTRIES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
