/* The benchmarks' load generator (bench/relay_fast.py, bench/relay_vs_rtpengine.py): it
 * plays the two endpoints of every stream from ONE socket per side, so that its sends and
 * receives batch across streams (sendmmsg / recvmmsg) and it costs less than the relay it
 * loads. RTP packets carry their send time in their RTP timestamp (CLOCK_REALTIME in us,
 * modulo 2^32: readable under SRTP, which leaves the header in the clear); the receive time
 * is the kernel's (SO_TIMESTAMPNS), so the end-to-end latency does not count the generator's
 * own delays. SRTP on a side is applied with libsrtp on every packet sent and checked on one
 * received packet in `verify_every` (1: all; more: a cheaper generator). */

#define LG_LAT_BUCKETS 10000  /* 10 us buckets up to 100 ms, then overflow */
#define LG_MAX_FLOWS 8192

typedef struct {
    int side;
    addr_t dest;
    int64_t period_ns, next_ns;
    int size;
    uint32_t ssrc;
    uint16_t seq;
    uint32_t ts;
    srtp_t tx;      /* this flow's own send session (external), else the side's */
} lg_flow_t;

static const char LOADGEN_DOC[] =
    "loadgen(fd_a, fd_b, flows, seconds, keys=(None, None), drain=0.5) -> dict\n"
    "flows: [(side, (host, port), pps, size, ssrc[, rx_key[, tx_session]])], sent from the\n"
    "side's socket; rx_key: the SRTP key this flow's packets arrive with at the other side\n"
    "(per SSRC); tx_session: the address of an external session this flow sends with (one\n"
    "stream each: libsrtp finds a session's streams by a linear search);\n"
    "keys: (send+receive SRTP key of side A or None, same for B);\n"
    "sessions: instead of keys, (tx_a, rx_a, tx_b, rx_b) addresses (0: none) of sessions\n"
    "of the external libsrtp (set_external_srtp), flows' receive streams already added;\n"
    "verify_every: unprotect (authenticate) one received SRTP packet in this many.";

/* adds a receive stream for one SSRC with its own key (rtpengine picks a key per call) */
static int lg_add_rx(srtp_t *ctx, PyObject *key, uint32_t ssrc) {
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(key, &data, &len) < 0) return -1;
    if (len != 30) {
        PyErr_SetString(PyExc_ValueError, "SRTP key must be 30 bytes");
        return -1;
    }
    if (!*ctx && srtp_create(ctx, NULL) != srtp_err_status_ok) {
        PyErr_SetString(PyExc_ValueError, "srtp_create failed");
        return -1;
    }
    srtp_policy_t policy;
    memset(&policy, 0, sizeof(policy));
    srtp_crypto_policy_set_rtp_default(&policy.rtp);
    srtp_crypto_policy_set_rtcp_default(&policy.rtcp);
    policy.ssrc.type = ssrc_specific;
    policy.ssrc.value = ssrc;
    policy.key = (unsigned char *)data;  /* copied by libsrtp's key derivation */
    if (srtp_add_stream(*ctx, &policy) != srtp_err_status_ok) {
        PyErr_SetString(PyExc_ValueError, "srtp_add_stream failed");
        return -1;
    }
    return 0;
}

static int lg_session(srtp_t *ctx, PyObject *key, int inbound) {
    *ctx = NULL;
    if (key == Py_None) return 0;
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(key, &data, &len) < 0) return -1;
    if (len != 30) {
        PyErr_SetString(PyExc_ValueError, "SRTP key must be 30 bytes");
        return -1;
    }
    return make_session(ctx, (const uint8_t *)data, inbound);
}

static PyObject *loadgen(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd_a", "fd_b", "flows", "seconds", "keys", "drain", "sessions",
                            "verify_every", NULL};
    int fds[2], verify_every = 1;
    PyObject *flow_list, *keys = NULL, *sessions = NULL;
    double seconds, drain = 0.5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiOd|OdOi", names, &fds[0], &fds[1], &flow_list,
                                     &seconds, &keys, &drain, &sessions, &verify_every))
        return NULL;
    if (verify_every < 1) verify_every = 1;
    uint64_t verify_count = 0;
    int external = sessions && sessions != Py_None;
    Py_ssize_t nflows = PySequence_Length(flow_list);
    if (nflows < 0) return NULL;
    if (nflows > LG_MAX_FLOWS) return PyErr_Format(PyExc_ValueError, "too many flows");
    lg_flow_t *flows = PyMem_Calloc(nflows ? nflows : 1, sizeof(lg_flow_t));
    uint64_t *lat = PyMem_Calloc(LG_LAT_BUCKETS + 1, sizeof(uint64_t));
    uint8_t(*bufs)[BUF_SIZE] = PyMem_Calloc(BATCH, BUF_SIZE);
    srtp_t tx[2] = {NULL, NULL}, rx[2] = {NULL, NULL};
    PyObject *result = NULL;
    if (!flows || !lat || !bufs) {
        PyErr_NoMemory();
        goto done;
    }
    if (external) {
        unsigned long long a[4];
        if (!PyArg_ParseTuple(sessions, "KKKK", &a[0], &a[1], &a[2], &a[3])) goto done;
        if (!ext_fn[0]) {
            PyErr_SetString(PyExc_ValueError, "sessions without set_external_srtp");
            goto done;
        }
        tx[0] = (srtp_t)(uintptr_t)a[0];
        rx[0] = (srtp_t)(uintptr_t)a[1];
        tx[1] = (srtp_t)(uintptr_t)a[2];
        rx[1] = (srtp_t)(uintptr_t)a[3];
    } else if (keys && keys != Py_None) {
        PyObject *ka, *kb;
        if (!PyArg_ParseTuple(keys, "OO", &ka, &kb)) goto done;
        if (lg_session(&tx[0], ka, 0) < 0 || lg_session(&rx[0], ka, 1) < 0 ||
            lg_session(&tx[1], kb, 0) < 0 || lg_session(&rx[1], kb, 1) < 0)
            goto done;
    }
    int64_t start = mono_ns() + 20000000LL;
    for (Py_ssize_t i = 0; i < nflows; i++) {
        PyObject *t = PySequence_GetItem(flow_list, i);
        PyObject *dest, *rx_key = Py_None;
        int side, size;
        double pps;
        unsigned int ssrc;
        unsigned long long tx_session = 0;
        int ok = t && PyArg_ParseTuple(t, "iOdiI|OK", &side, &dest, &pps, &size, &ssrc, &rx_key,
                                       &tx_session);
        Py_XDECREF(t);
        if (!ok) goto done;
        if (!external && rx_key != Py_None &&
            (side < 0 || side > 1 || lg_add_rx(&rx[!side], rx_key, ssrc) < 0))
            goto done;
        if (side < 0 || side > 1 || pps <= 0 || size < 20 || size > MAX_IN - 64) {
            PyErr_SetString(PyExc_ValueError, "bad flow (side, pps or size)");
            goto done;
        }
        if (addr_from_py(dest, &flows[i].dest) < 0) goto done;
        if (tx_session && !external) {
            PyErr_SetString(PyExc_ValueError, "a flow's tx_session needs external sessions");
            goto done;
        }
        flows[i].tx = (srtp_t)(uintptr_t)tx_session;
        flows[i].side = side;
        flows[i].period_ns = (int64_t)(1e9 / pps);
        /* spread the flows' phases over one period */
        flows[i].next_ns = start + (flows[i].period_ns * (i * 7919 % 1000)) / 1000;
        flows[i].size = size;
        flows[i].ssrc = ssrc;
        flows[i].seq = (uint16_t)(i * 31);
        flows[i].ts = (uint32_t)i * 1000;
    }
    /* 32 MB: ~0.3 s of 300 calls' half per socket, so that the generator lagging behind
     * (descheduled on the shared machine, or the kernel throttling SCHED_FIFO at 95 % of the
     * CPU) delays its reading of what the relay delivered instead of losing it */
    int on = 1, rcvbuf = 32 << 20;
    for (int s = 0; s < 2; s++) {
        setsockopt(fds[s], SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on));
        setsockopt(fds[s], SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
        setsockopt(fds[s], SOL_SOCKET, SO_SNDBUFFORCE, &rcvbuf, sizeof(rcvbuf));
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int s = 0; s < 2; s++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)s};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[s], &ev);
    }
    uint64_t sent[2] = {0, 0}, received[2] = {0, 0}, send_err = 0, bad = 0, srtp_fail = 0;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage src[BATCH];
    char ctl[BATCH][64];
    int64_t stop_send = start + (int64_t)(seconds * 1e9);
    int64_t stop = stop_send + (int64_t)(drain * 1e9);
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        int64_t now = mono_ns();
        if (now >= stop) break;
        /* send what is due (all of it: a generator that was descheduled catches up at
         * once, as a network burst would), batched per side */
        if (now < stop_send) {
            for (int s = 0; s < 2; s++) {
                int k = 0;
                struct timespec wall;
                clock_gettime(CLOCK_REALTIME, &wall);
                uint32_t wall_us = (uint32_t)((int64_t)wall.tv_sec * 1000000LL + wall.tv_nsec / 1000);
                for (Py_ssize_t i = 0; i <= nflows; i++) {
                    lg_flow_t *f = i < nflows ? &flows[i] : NULL;
                    while (k == BATCH || (!f && k) ||
                           (f && f->side == s && f->next_ns <= now && f->next_ns < stop_send)) {
                        if (k == BATCH || !f) {
                            int done_n = 0;
                            while (done_n < k) {
                                int m = sendmmsg(fds[s], msgs + done_n, k - done_n, 0);
                                if (m <= 0) {
                                    if (m < 0 && (errno == EINTR || errno == ECONNREFUSED))
                                        continue;
                                    send_err += (uint64_t)(k - done_n);
                                    break;
                                }
                                done_n += m;
                                sent[s] += (uint64_t)m;
                            }
                            k = 0;
                            if (!f) break;
                            continue;
                        }
                        f->next_ns += f->period_ns;
                        uint8_t *p = bufs[k];
                        memset(p, 0, (size_t)f->size);
                        p[0] = 0x80;
                        p[1] = f->size > 400 ? 97 : 96;
                        p[2] = f->seq >> 8; p[3] = (uint8_t)f->seq;
                        wr32(p + 4, wall_us);
                        wr32(p + 8, f->ssrc);
                        f->seq++;
                        int len = f->size;
                        srtp_t ctx = f->tx ? f->tx : tx[s];
                        if (ctx && run_srtp(ctx, external, 0, p, &len) != srtp_err_status_ok) {
                            srtp_fail++;
                            continue;
                        }
                        set_out_msg(&msgs[k], &iov[k], p, (size_t)len, &f->dest.ss,
                                    f->dest.len);
                        k++;
                    }
                }
            }
        }
        /* receive until the next millisecond tick */
        struct epoll_event evs[2];
        int n = epoll_wait(ep, evs, 2, 1);
        for (int e = 0; e < n; e++) {
            int s = (int)evs[e].data.u32;
            for (;;) {
                for (int i = 0; i < BATCH; i++) {
                    iov[i].iov_base = bufs[i];
                    iov[i].iov_len = BUF_SIZE;
                    memset(&msgs[i].msg_hdr, 0, sizeof(struct msghdr));
                    msgs[i].msg_hdr.msg_name = &src[i];
                    msgs[i].msg_hdr.msg_namelen = sizeof(src[i]);
                    msgs[i].msg_hdr.msg_iov = &iov[i];
                    msgs[i].msg_hdr.msg_iovlen = 1;
                    msgs[i].msg_hdr.msg_control = ctl[i];
                    msgs[i].msg_hdr.msg_controllen = sizeof(ctl[i]);
                }
                int m = recvmmsg(fds[s], msgs, BATCH, MSG_DONTWAIT, NULL);
                if (m <= 0) {
                    if (m < 0 && errno == ECONNREFUSED) continue;
                    break;
                }
                for (int i = 0; i < m; i++) {
                    uint8_t *p = bufs[i];
                    int len = (int)msgs[i].msg_len;
                    if (len < 20 || p[0] >> 6 != 2) { bad++; continue; }
                    if (rx[s] && verify_count++ % (uint64_t)verify_every == 0 &&
                        run_srtp(rx[s], external, 1, p, &len) != srtp_err_status_ok) {
                        srtp_fail++;
                        continue;
                    }
                    received[s]++;
                    struct timespec got = {0, 0};
                    struct msghdr *h = &msgs[i].msg_hdr;
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS)
                            memcpy(&got, CMSG_DATA(c), sizeof(got));
                    uint32_t now_us = (uint32_t)((int64_t)got.tv_sec * 1000000LL +
                                                 got.tv_nsec / 1000);
                    int32_t us = (int32_t)(now_us - rd32(p + 4));
                    int64_t b = us < 0 ? 0 : us / 10;
                    lat[b < LG_LAT_BUCKETS ? b : LG_LAT_BUCKETS]++;
                }
                if (m < BATCH) break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    close(ep);
    {
        PyObject *hist = PyList_New(LG_LAT_BUCKETS + 1);
        if (!hist) goto done;
        for (int i = 0; i <= LG_LAT_BUCKETS; i++)
            PyList_SET_ITEM(hist, i, PyLong_FromUnsignedLongLong(lat[i]));
        result = Py_BuildValue("{s(KK)s(KK)sKsKsKsN}", "sent", sent[0], sent[1], "received",
                               received[0], received[1], "send_errors", send_err, "malformed",
                               bad, "srtp_failures", srtp_fail, "latency_10us", hist);
    }
done:
    for (int s = 0; s < 2 && !external; s++) {  /* external sessions belong to their owner */
        if (tx[s]) srtp_dealloc(tx[s]);
        if (rx[s]) srtp_dealloc(rx[s]);
    }
    PyMem_Free(flows);
    PyMem_Free(lat);
    PyMem_Free(bufs);
    return result;
}
