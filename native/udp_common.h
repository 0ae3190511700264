/* What the two native UDP paths share (media/relay_native/_relay.c and
 * turn/fastpath_native/_fastpath.c): the monotonic clock, IP addresses between Python's
 * (host, port) and struct sockaddr_storage, and one sendmmsg entry's header.
 *
 * Included by each extension's single source file (setup.py: include_dirs, depends), so
 * everything here is static inline: a file that does not use a helper is not warned about. */
#ifndef GATEWAY_NATIVE_UDP_COMMON_H
#define GATEWAY_NATIVE_UDP_COMMON_H

#include <Python.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* host (an IPv4 or IPv6 literal) and port (checked by the caller) into *ss and *len;
 * -1 with ValueError when host is not an IP address. */
static inline int sockaddr_from_host(const char *host, int port, struct sockaddr_storage *ss,
                                     socklen_t *len) {
    struct sockaddr_in *v4 = (void *)ss;
    struct sockaddr_in6 *v6 = (void *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

/* Same family, address and port (IPv4 and IPv6 only). */
static inline int sockaddr_eq(const struct sockaddr_storage *a,
                              const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (b->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (b->ss_family != AF_INET6) return 0;
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
}

/* (host, port), or None for a family other than IPv4/IPv6. */
static inline PyObject *addr_to_py(const struct sockaddr_storage *ss) {
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

/* One sendmmsg entry: len bytes at data to `to`, through the entry's own iovec. */
static inline void set_out_msg(struct mmsghdr *m, struct iovec *iov, void *data, size_t len,
                               const struct sockaddr_storage *to, socklen_t to_len) {
    iov->iov_base = data;
    iov->iov_len = len;
    struct msghdr *o = &m->msg_hdr;
    memset(o, 0, sizeof(*o));
    o->msg_name = (void *)to;
    o->msg_namelen = to_len;
    o->msg_iov = iov;
    o->msg_iovlen = 1;
}

#endif
