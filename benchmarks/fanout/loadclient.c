/*
 * loadclient — the fan-out benchmark's load harness: one single-threaded epoll process holding N client
 * connections to a server on 127.0.0.1, speaking either WebSocket (mode ws: ProgressEngine's listener or
 * the Python `websockets` server) or RESP (mode redis: redis-server SUBSCRIBE).
 *
 *   loadclient ws|redis PORT N TASKS SUBS [FLAGS]
 *
 * FLAGS (ws only, comma-separated): `delta` subscribes with "delta": true (merge patches are counted as
 * deliveries like full states; their stage message carries the stamp too), `deflate` offers
 * permessage-deflate and inflates compressed messages (context takeover, as a browser does). REPORT's
 * `wire_bytes` is what the deliveries took on the wire (frame headers included, compressed when compressed);
 * `bytes` stays the messages' length.
 *
 * It connects the N clients (at most CONNECT_WINDOW handshakes in flight), prints
 * `CONNECTED {json}` once every one is open (ws: `connection.established` received; redis: PING
 * answered) or has failed, then obeys lines on stdin:
 *
 *   sub     client i subscribes to tasks (i*SUBS + j) % TASKS, j < SUBS ("task-%04d" ids / channels) and
 *           `SUBSCRIBED {json}` is printed when every client has its SUBS initial states (ws) or
 *           SUBS confirmations (redis)
 *   sub star  the same, but a ws client subscribes to "*" (SUBS must equal TASKS: every task, as a dashboard
 *           watching a fleet does); redis clients SUBSCRIBE to the TASKS channels as for `sub`
 *   reset   zeroes the delivery counters and latency samples
 *   status  prints `STATUS {"deliveries","since_reset_s","last_rx_s"}` at once (no sorting: the harness polls it
 *           while deliveries still arrive, and sorting millions of samples there would delay them)
 *   report  prints `REPORT {json}`: deliveries since reset, latency percentiles, open/closed connections
 *   quit    closes everything and exits
 *
 * A delivery is one `progress.update` text message (ws) or one pub/sub `message` push (redis). Its
 * latency is the receipt time (CLOCK_REALTIME, read once per read() call) minus the `"t=<ns>"`
 * CLOCK_REALTIME stamp the publisher put in the payload, sampled once per stamp per connection and task
 * (a later delivery of a state the client already has, e.g. after an engine-side change that is no
 * runner call, counts as a delivery and a `repeats`, not as a latency sample). Server frames are unmasked; fragmented messages,
 * 16- and 64-bit lengths, ping (answered) and close are handled. Client frames use the all-zero mask
 * key (legal, and it keeps the harness cheap).
 *
 * Bounded: every wait has a deadline (CONNECT_DEADLINE_S, SUB_DEADLINE_S); latency samples are capped.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

enum { MODE_WS, MODE_REDIS };
enum { ST_CONNECTING, ST_HANDSHAKE, ST_WAIT_OPEN, ST_OPEN, ST_CLOSED };
enum { CONNECT_WINDOW = 256, READ_BUF = 1 << 18, MAX_EVENTS = 1024 };
#define CONNECT_DEADLINE_S 90.0
#define SUB_DEADLINE_S 60.0
#define MAX_SAMPLES (8u << 20)

struct conn {
    int fd;
    int state;
    int subscribing; /* subscribe sent, not yet complete */
    uint32_t got;    /* initial states / confirmations received since subscribe */
    unsigned char *carry; /* unparsed tail of the stream */
    size_t carry_len, carry_cap;
    unsigned char *msg; /* ws message being reassembled from fragments */
    size_t msg_len, msg_cap;
    int msg_opcode;
    int64_t *stamps; /* per subscribed task (index j): the newest stamp seen */
    int pmd;         /* permessage-deflate accepted by the server */
    z_stream inflater;
};

static int mode, port, nconns, ntasks, nsubs;
static struct conn *conns;
static int ep;
static unsigned char *rbuf;
static int64_t recv_ns; /* CLOCK_REALTIME of the current read() */

/* Counters. */
static int n_started, n_open, n_failed, n_closed, n_subscribed, inflight;
static int sub_phase;
static uint64_t deliveries, delivery_bytes, wire_bytes, errors_seen, no_stamp, repeats;
static int want_delta, want_deflate;
/* Wire bytes of the frame being handled (added to wire_bytes if it is a delivery). */
static uint64_t frame_wire;
static unsigned char *inflated;
enum { INFLATED_CAP = 1 << 20 };
static int64_t reset_mono_ns, last_rx_mono_ns;
static int64_t *samples;
static uint32_t n_samples;
static char first_error[256];

static int64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what) {
    printf("FATAL {\"error\":\"%s: %s\"}\n", what, strerror(errno));
    fflush(stdout);
    exit(2);
}

static void note_error(const char *text, size_t len) {
    errors_seen++;
    if (first_error[0] == 0) {
        size_t n = 0;
        for (size_t i = 0; i < len && n + 1 < sizeof first_error; i++) {
            char ch = (char)text[i];
            if (ch == '"' || ch == '\\' || (unsigned char)ch < 0x20) ch = '\'';
            first_error[n++] = ch;
        }
        first_error[n] = 0;
    }
}

static void close_conn(struct conn *c, int failed) {
    if (c->state == ST_CLOSED) return;
    if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE || c->state == ST_WAIT_OPEN) {
        inflight--;
        if (failed) n_failed++;
    } else {
        n_open--;
        n_closed++;
    }
    if (c->subscribing) {
        c->subscribing = 0;
        n_subscribed++; /* do not wait for it forever; counted as closed */
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    free(c->carry);
    free(c->msg);
    free(c->stamps);
    c->stamps = NULL;
    if (c->pmd) inflateEnd(&c->inflater);
    c->pmd = 0;
    c->carry = c->msg = NULL;
    c->carry_len = c->carry_cap = c->msg_len = c->msg_cap = 0;
}

static int send_all(struct conn *c, const void *buf, size_t len) {
    const char *p = buf;
    int tries = 0;
    while (len > 0) {
        ssize_t n = write(c->fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN && tries++ < 1000) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL); /* client messages are small; a full send buffer is not expected */
        } else {
            return -1;
        }
    }
    return 0;
}

/* A WebSocket client frame (FIN, zero mask key). */
static int ws_send(struct conn *c, int opcode, const void *payload, size_t len) {
    unsigned char *frame = malloc(len + 14);
    if (!frame) return -1;
    size_t h = 0;
    frame[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        frame[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        frame[h++] = 0x80 | 126;
        frame[h++] = (unsigned char)(len >> 8);
        frame[h++] = (unsigned char)len;
    } else {
        frame[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) frame[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    memset(frame + h, 0, 4);
    h += 4;
    memcpy(frame + h, payload, len);
    int rc = send_all(c, frame, h + len);
    free(frame);
    return rc;
}

static void start_connect(int i) {
    struct conn *c = &conns[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = fd;
    c->state = ST_CONNECTING;
    inflight++;
    n_started++;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) close_conn(c, 1);
}

static void connected(int i) {
    struct conn *c = &conns[i];
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        close_conn(c, 1);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    if (mode == MODE_WS) {
        char req[512];
        int n = snprintf(req, sizeof req,
                         "GET /api/v1/progress/ws?client_id=c%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                         i, port,
                         want_deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
        c->state = ST_HANDSHAKE;
        if (send_all(c, req, (size_t)n) < 0) close_conn(c, 1);
    } else {
        c->state = ST_WAIT_OPEN;
        if (send_all(c, "PING\r\n", 6) < 0) close_conn(c, 1);
    }
}

static void became_open(struct conn *c) {
    c->state = ST_OPEN;
    inflight--;
    n_open++;
}

static void subscribe_done(struct conn *c) {
    c->subscribing = 0;
    n_subscribed++;
}

/* ---- deliveries ---- */

/* Index j (< SUBS) of "task-NNNN" among connection i's subscriptions, or -1. */
static int sub_index(struct conn *c, const unsigned char *id, size_t len) {
    const unsigned char *t = memmem(id, len, "task-", 5);
    if (t == NULL || (size_t)(t - id) + 9 > len) return -1;
    int task = 0;
    for (int k = 5; k < 9; k++) {
        if (t[k] < '0' || t[k] > '9') return -1;
        task = task * 10 + (t[k] - '0');
    }
    long i = c - conns;
    int j = (int)(((task - (i * nsubs) % ntasks) % ntasks + ntasks) % ntasks);
    return j < nsubs ? j : -1;
}

/* One delivery; `id` is where its task id is (the ws envelope's head, or the redis channel). Its latency
 * is sampled only for a stamp this connection has not seen for the task: a re-send of an older state
 * (an engine-side change without a runner call) is a delivery, not a runner-to-client latency. */
static void delivery(struct conn *c, const unsigned char *p, size_t len, const unsigned char *id, size_t id_len) {
    if (c->subscribing && ++c->got >= (uint32_t)nsubs) subscribe_done(c);
    deliveries++;
    delivery_bytes += len;
    wire_bytes += frame_wire;
    last_rx_mono_ns = now_ns(CLOCK_MONOTONIC);
    const unsigned char *t = memmem(p, len, "\"t=", 3);
    if (t == NULL) {
        no_stamp++;
        return;
    }
    t += 3;
    const unsigned char *end = p + len;
    int64_t stamp = 0;
    while (t < end && *t >= '0' && *t <= '9') stamp = stamp * 10 + (*t++ - '0');
    if (stamp == 0) {
        no_stamp++; /* the initial "t=0" state */
        return;
    }
    int j = c->stamps ? sub_index(c, id, id_len) : -1;
    if (j >= 0) {
        if (stamp <= c->stamps[j]) {
            repeats++;
            return;
        }
        c->stamps[j] = stamp;
    }
    if (n_samples < MAX_SAMPLES) samples[n_samples++] = recv_ns - stamp;
}

static void ws_message(struct conn *c, int opcode, const unsigned char *p, size_t len) {
    if (opcode != 1) return; /* only text is expected */
    size_t head = len < 64 ? len : 64;
    if (memmem(p, head, "\"progress.update\"", 17)) {
        delivery(c, p, len, p, head);
    } else if (memmem(p, head, "\"connection.established\"", 24)) {
        if (c->state == ST_WAIT_OPEN) became_open(c);
    } else if (memmem(p, head, "\"error\"", 7)) {
        note_error((const char *)p, len);
    }
}

/* Parses WebSocket frames from buf; returns bytes consumed (whole frames only), or -1 to close. */
static long ws_parse(struct conn *c, const unsigned char *buf, size_t len) {
    size_t off = 0;
    for (;;) {
        if (len - off < 2) break;
        const unsigned char *f = buf + off;
        int fin = f[0] & 0x80, opcode = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t plen = f[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (len - off < 4) break;
            plen = ((uint64_t)f[2] << 8) | f[3];
            h = 4;
        } else if (plen == 127) {
            if (len - off < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | f[2 + i];
            h = 10;
        }
        if (plen > (64u << 20)) return -1;
        unsigned char mask[4] = {0, 0, 0, 0};
        if (masked) {
            if (len - off < h + 4) break;
            memcpy(mask, f + h, 4);
            h += 4;
        }
        if (len - off < h + plen) break;
        unsigned char *payload = (unsigned char *)f + h;
        if (masked)
            for (uint64_t i = 0; i < plen; i++) payload[i] ^= mask[i & 3];
        off += h + plen;
        if (opcode >= 8) { /* control frames are never fragmented */
            if (opcode == 8) return -1;
            if (opcode == 9 && ws_send(c, 0xA, payload, plen) < 0) return -1;
            continue;
        }
        frame_wire = h + plen;
        if (f[0] & 0x40) { /* RSV1: a compressed message (the servers here never fragment one) */
            if (!c->pmd || !fin || opcode == 0) return -1;
            static const unsigned char trailer[4] = {0, 0, 0xff, 0xff};
            c->inflater.next_out = inflated;
            c->inflater.avail_out = INFLATED_CAP;
            c->inflater.next_in = payload;
            c->inflater.avail_in = (uInt)plen;
            if (inflate(&c->inflater, Z_SYNC_FLUSH) != Z_OK) return -1;
            c->inflater.next_in = (unsigned char *)trailer;
            c->inflater.avail_in = 4;
            int rc = inflate(&c->inflater, Z_SYNC_FLUSH);
            if ((rc != Z_OK && rc != Z_BUF_ERROR) || c->inflater.avail_in != 0) return -1;
            ws_message(c, opcode, inflated, INFLATED_CAP - c->inflater.avail_out);
            continue;
        }
        if (opcode != 0 && fin && c->msg_len == 0) {
            ws_message(c, opcode, payload, plen); /* the common case: one frame, no copy */
            continue;
        }
        if (opcode != 0) c->msg_opcode = opcode;
        if (c->msg_len + plen > c->msg_cap) {
            size_t cap = c->msg_cap ? c->msg_cap : 4096;
            while (cap < c->msg_len + plen) cap *= 2;
            unsigned char *m = realloc(c->msg, cap);
            if (!m) return -1;
            c->msg = m;
            c->msg_cap = cap;
        }
        memcpy(c->msg + c->msg_len, payload, plen);
        c->msg_len += plen;
        if (fin) {
            ws_message(c, c->msg_opcode, c->msg, c->msg_len);
            c->msg_len = 0;
        }
    }
    return (long)off;
}

/* ---- RESP (RESP2 replies and pub/sub pushes) ---- */

/* Reads "<digits>\r\n" at p; returns the pointer after it or NULL if incomplete. */
static const unsigned char *resp_int(const unsigned char *p, const unsigned char *end, long long *out) {
    long long v = 0;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    if (end - p < 2) return NULL;
    *out = neg ? -v : v;
    return p + 2;
}

static long resp_parse(struct conn *c, const unsigned char *buf, size_t len) {
    const unsigned char *p = buf, *end = buf + len;
    while (p < end) {
        const unsigned char *start = p;
        if (*p == '+' || *p == '-' || *p == ':') { /* simple line */
            const unsigned char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
            if (!eol) break;
            if (*p == '+' && c->state == ST_WAIT_OPEN) became_open(c);
            if (*p == '-') note_error((const char *)p, (size_t)(eol - p));
            p = eol + 2;
            continue;
        }
        if (*p != '*') return -1;
        long long n;
        const unsigned char *q = resp_int(p + 1, end, &n);
        if (!q) break;
        const unsigned char *el[3] = {0};
        long long el_len[3] = {0};
        int complete = 1;
        for (long long i = 0; i < n; i++) {
            if (q >= end) { complete = 0; break; }
            if (*q == ':') {
                long long v;
                q = resp_int(q + 1, end, &v);
                if (!q) { complete = 0; break; }
                continue;
            }
            if (*q != '$') return -1;
            long long bl;
            q = resp_int(q + 1, end, &bl);
            if (!q || end - q < bl + 2) { complete = 0; break; }
            if (i < 3) {
                el[i] = q;
                el_len[i] = bl;
            }
            q += bl + 2;
        }
        if (!complete) {
            p = start;
            break;
        }
        p = q;
        if (n == 3 && el[0] && el_len[0] == 7 && memcmp(el[0], "message", 7) == 0 && el[2]) {
            delivery(c, el[2], (size_t)el_len[2], el[1], (size_t)el_len[1]);
        } else if (n == 3 && el[0] && el_len[0] == 9 && memcmp(el[0], "subscribe", 9) == 0) {
            if (c->subscribing && ++c->got >= (uint32_t)nsubs) subscribe_done(c);
        }
    }
    return (long)(p - buf);
}

/* ---- reading ---- */

static long parse_stream(struct conn *c, const unsigned char *buf, size_t len) {
    if (c->state == ST_HANDSHAKE) {
        const unsigned char *eoh = memmem(buf, len, "\r\n\r\n", 4);
        if (!eoh) return len > 8192 ? -1 : 0;
        if (len < 12 || memcmp(buf + 9, "101", 3) != 0) {
            note_error((const char *)buf, (size_t)(eoh - buf));
            return -1;
        }
        c->state = ST_WAIT_OPEN;
        if (memmem(buf, (size_t)(eoh - buf), "permessage-deflate", 18)) {
            if (inflateInit2(&c->inflater, -15) != Z_OK) return -1;
            c->pmd = 1;
        }
        size_t used = (size_t)(eoh + 4 - buf);
        long more = ws_parse(c, buf + used, len - used);
        return more < 0 ? -1 : (long)used + more;
    }
    return mode == MODE_WS ? ws_parse(c, buf, len) : resp_parse(c, buf, len);
}

static void readable(int i) {
    struct conn *c = &conns[i];
    ssize_t n = read(c->fd, rbuf, READ_BUF);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        close_conn(c, 1);
        return;
    }
    recv_ns = now_ns(CLOCK_REALTIME);
    unsigned char *buf = rbuf;
    size_t len = (size_t)n;
    if (c->carry_len) { /* append to the unparsed tail */
        if (c->carry_len + len > c->carry_cap) {
            size_t cap = c->carry_cap ? c->carry_cap : 4096;
            while (cap < c->carry_len + len) cap *= 2;
            unsigned char *m = realloc(c->carry, cap);
            if (!m) die("realloc");
            c->carry = m;
            c->carry_cap = cap;
        }
        memcpy(c->carry + c->carry_len, rbuf, len);
        c->carry_len += len;
        buf = c->carry;
        len = c->carry_len;
    }
    long used = parse_stream(c, buf, len);
    if (used < 0) {
        close_conn(c, 1);
        return;
    }
    size_t left = len - (size_t)used;
    if (buf == c->carry) {
        memmove(c->carry, c->carry + used, left);
        c->carry_len = left;
        if (left == 0 && c->carry_cap > 65536) { /* do not keep big buffers */
            free(c->carry);
            c->carry = NULL;
            c->carry_cap = 0;
        }
    } else if (left) {
        size_t cap = 4096;
        while (cap < left) cap *= 2;
        c->carry = malloc(cap);
        if (!c->carry) die("malloc");
        c->carry_cap = cap;
        memcpy(c->carry, buf + used, left);
        c->carry_len = left;
    }
}

/* ---- commands ---- */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double q) {
    if (n_samples == 0) return -1;
    size_t k = (size_t)(q * (n_samples - 1) + 0.5);
    return samples[k] / 1000.0;
}

static double cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1e6 + ru.ru_stime.tv_usec;
}

static double reset_cpu_us;

/* Seconds from the reset to the last delivery (0: none yet). */
static double last_rx_s(void) {
    return deliveries && last_rx_mono_ns > reset_mono_ns ? (last_rx_mono_ns - reset_mono_ns) / 1e9 : 0;
}

static void status(void) {
    printf("STATUS {\"deliveries\":%llu,\"since_reset_s\":%.6f,\"last_rx_s\":%.6f}\n", (unsigned long long)deliveries,
           (now_ns(CLOCK_MONOTONIC) - reset_mono_ns) / 1e9, last_rx_s());
    fflush(stdout);
}

static void report(void) {
    qsort(samples, n_samples, sizeof *samples, cmp_i64);
    int64_t now = now_ns(CLOCK_MONOTONIC);
    double last = last_rx_s();
    printf("REPORT {\"deliveries\":%llu,\"bytes\":%llu,\"wire_bytes\":%llu,\"since_reset_s\":%.6f,\"last_rx_s\":%.6f,"
           "\"samples\":%u,\"no_stamp\":%llu,\"repeats\":%llu,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
           "\"max_us\":%.1f,\"min_us\":%.1f,\"open\":%d,\"closed\":%d,\"failed\":%d,\"errors\":%llu,"
           "\"first_error\":\"%s\",\"client_cpu_us\":%.0f}\n",
           (unsigned long long)deliveries, (unsigned long long)delivery_bytes, (unsigned long long)wire_bytes, (now - reset_mono_ns) / 1e9, last,
           n_samples, (unsigned long long)no_stamp, (unsigned long long)repeats, pct(0.50), pct(0.90), pct(0.99), pct(0.999), pct(1.0),
           pct(0.0), n_open, n_closed, n_failed, (unsigned long long)errors_seen, first_error,
           cpu_us() - reset_cpu_us);
    fflush(stdout);
}

static void do_reset(void) {
    deliveries = delivery_bytes = wire_bytes = no_stamp = repeats = 0;
    n_samples = 0;
    reset_mono_ns = now_ns(CLOCK_MONOTONIC);
    last_rx_mono_ns = 0;
    reset_cpu_us = cpu_us();
}

static void send_subscriptions(int star) {
    size_t cap = 64 + (size_t)nsubs * 40;
    char *buf = malloc(cap);
    if (!buf) die("malloc");
    sub_phase = 1;
    n_subscribed = 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->state != ST_OPEN) {
            n_subscribed++;
            continue;
        }
        size_t n = 0;
        if (mode == MODE_WS && star) {
            n += (size_t)snprintf(buf + n, cap - n, "{\"type\":\"subscribe\",\"task_ids\":[\"*\"]}");
        } else if (mode == MODE_WS) {
            n += (size_t)snprintf(buf + n, cap - n, "{\"type\":\"subscribe\",\"task_ids\":[");
            for (int j = 0; j < nsubs; j++)
                n += (size_t)snprintf(buf + n, cap - n, "%s\"task-%04d\"", j ? "," : "",
                                      (int)(((long)i * nsubs + j) % ntasks));
            n += (size_t)snprintf(buf + n, cap - n, "]%s}", want_delta ? ",\"delta\":true" : "");
        } else {
            n += (size_t)snprintf(buf + n, cap - n, "*%d\r\n$9\r\nSUBSCRIBE\r\n", nsubs + 1);
            for (int j = 0; j < nsubs; j++)
                n += (size_t)snprintf(buf + n, cap - n, "$9\r\ntask-%04d\r\n", (int)(((long)i * nsubs + j) % ntasks));
        }
        c->subscribing = 1;
        c->got = 0;
        free(c->stamps);
        c->stamps = calloc((size_t)nsubs ? (size_t)nsubs : 1, sizeof *c->stamps);
        int rc = mode == MODE_WS ? ws_send(c, 1, buf, n) : send_all(c, buf, n);
        if (rc < 0) close_conn(c, 1);
    }
    free(buf);
}

static char line[4096];
static size_t line_len;

/* Returns 1 on quit. */
static int command(const char *cmd) {
    if (strcmp(cmd, "sub") == 0) {
        send_subscriptions(0);
    } else if (strcmp(cmd, "sub star") == 0) {
        if (nsubs != ntasks) die("sub star: SUBS must equal TASKS");
        send_subscriptions(1);
    } else if (strcmp(cmd, "reset") == 0) {
        do_reset();
        printf("RESET {}\n");
        fflush(stdout);
    } else if (strcmp(cmd, "status") == 0) {
        status();
    } else if (strcmp(cmd, "report") == 0) {
        report();
    } else if (strcmp(cmd, "quit") == 0) {
        return 1;
    }
    return 0;
}

static int stdin_readable(void) {
    ssize_t n = read(0, line + line_len, sizeof line - 1 - line_len);
    if (n <= 0) return n == 0 || (errno != EAGAIN && errno != EINTR); /* EOF: quit */
    line_len += (size_t)n;
    char *nl;
    while ((nl = memchr(line, '\n', line_len)) != NULL) {
        *nl = 0;
        if (command(line)) return 1;
        size_t used = (size_t)(nl + 1 - line);
        memmove(line, nl + 1, line_len - used);
        line_len -= used;
    }
    if (line_len == sizeof line - 1) line_len = 0;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s ws|redis PORT N TASKS SUBS [delta,deflate]\n", argv[0]);
        return 2;
    }
    if (argc == 7) {
        want_delta = strstr(argv[6], "delta") != NULL;
        want_deflate = strstr(argv[6], "deflate") != NULL;
    }
    mode = strcmp(argv[1], "redis") == 0 ? MODE_REDIS : MODE_WS;
    port = atoi(argv[2]);
    nconns = atoi(argv[3]);
    ntasks = atoi(argv[4]);
    nsubs = atoi(argv[5]);
    if (port <= 0 || nconns <= 0 || ntasks <= 0 || nsubs < 0 || nsubs > ntasks) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)nconns + 64) {
        printf("FATAL {\"error\":\"RLIMIT_NOFILE hard limit %llu < %d connections + 64; raise it (ulimit -Hn)\"}\n",
               (unsigned long long)rl.rlim_max, nconns);
        return 3;
    }
    conns = calloc((size_t)nconns, sizeof *conns);
    rbuf = malloc(READ_BUF);
    inflated = malloc(INFLATED_CAP);
    samples = malloc(sizeof *samples * MAX_SAMPLES);
    if (!conns || !rbuf || !samples || !inflated) die("malloc");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);

    int64_t t0 = now_ns(CLOCK_MONOTONIC), sub_t0 = 0;
    int announced = 0, quit = 0;
    struct epoll_event evs[MAX_EVENTS];
    do_reset();
    while (!quit) {
        while (n_started < nconns && inflight < CONNECT_WINDOW) start_connect(n_started);
        int64_t now = now_ns(CLOCK_MONOTONIC);
        if (!announced && (n_open + n_failed + n_closed >= nconns || (now - t0) / 1e9 > CONNECT_DEADLINE_S)) {
            announced = 1;
            printf("CONNECTED {\"open\":%d,\"failed\":%d,\"closed\":%d,\"pending\":%d,\"seconds\":%.3f,"
                   "\"first_error\":\"%s\"}\n",
                   n_open, n_failed, n_closed, inflight, (now - t0) / 1e9, first_error);
            fflush(stdout);
        }
        if (sub_phase == 1 && sub_t0 == 0) sub_t0 = now;
        if (sub_phase == 1 && (n_subscribed >= nconns || (now - sub_t0) / 1e9 > SUB_DEADLINE_S)) {
            sub_phase = 2;
            printf("SUBSCRIBED {\"subscribed\":%d,\"open\":%d,\"seconds\":%.3f,\"errors\":%llu,\"first_error\":\"%s\"}\n",
                   n_subscribed, n_open, (now - sub_t0) / 1e9, (unsigned long long)errors_seen, first_error);
            fflush(stdout);
        }
        int n = epoll_wait(ep, evs, MAX_EVENTS, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n && !quit; k++) {
            uint32_t i = evs[k].data.u32;
            if (i == UINT32_MAX) {
                quit = stdin_readable();
                continue;
            }
            struct conn *c = &conns[i];
            if (c->state == ST_CLOSED) continue;
            if (c->state == ST_CONNECTING) {
                if (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) connected((int)i);
                continue;
            }
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) readable((int)i);
        }
    }
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != ST_CLOSED) close(conns[i].fd);
    return 0;
}
