/*
 * floor_server — (d) of the fan-out benchmark: the floor. A single-threaded C epoll WebSocket server that
 * does the least a server can do to deliver the benchmark's update stream, so that its CPU per delivery
 * is what the kernel and the bare minimum of user space cost, whatever a server's design:
 *
 *   floor_server TASKS TEMPLATE_FILE
 *
 * It generates the same update stream as python_server.py itself (TEMPLATE_FILE: `runner dump`), each
 * update a `{"type":"progress.update","task_id","seq","data":TaskProgress}` text frame of the listener's
 * size, built by copying the template around a new "t=<CLOCK_REALTIME ns>" stamp and seq (no JSON
 * encoder, no per-client state beyond the subscriptions), and delivers it the way ProgressEngine's
 * listener does: the frame is appended to each subscriber's output buffer, and at the end of the round
 * each client's new bytes go out in one send(). A client with more than OUT_CAP bytes unsent gets no new
 * frames until it drains (the listener coalesces instead; neither holds a delivery back).
 *
 * Protocol (the subset the load harness uses, as python_server.py): the RFC 6455 handshake on any path,
 * `connection.established` on open; `subscribe` / `unsubscribe` {task_ids: ["task-NNNN", ...]} answered
 * with `subscribed` / `unsubscribed` (and, for subscribe, each task's current state); ping → pong;
 * close → close; any other text gets an `error`. Client frames must be masked and under 64 KiB.
 *
 * Prints `READY {"port","pid"}` and obeys lines on stdin, like `runner`:
 *   run SECONDS PERIOD_MS   PERIOD_MS > 0: each task once every PERIOD_MS, staggered over the period
 *                           (after a stall never sooner than 0.6 periods after the task's previous
 *                           update); 0: saturation (rounds over every task back to back, the sockets
 *                           serviced after each round). Prints `DONE {"updates","receivers","dropped","wall_s",
 *                           "late_ms"}` (dropped: frames not queued for clients more than OUT_CAP behind).
 *   quit
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fanout_common.h"

#define STAMP_DIGITS 19
#define IN_CAP 8192             /* a client's unparsed input; a frame that does not fit closes it */
#define OUT_CAP (256 * 1024)    /* unsent bytes past which a client's new frames are dropped */
#define MAX_EVENTS 1024
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" /* RFC 6455 section 1.3 */

struct client {
    int fd;          /* -1: slot free */
    int open;        /* handshake done */
    int dirty;       /* has bytes queued since the last flush (in the dirty list) */
    int want_out;    /* EPOLLOUT armed: the socket took less than we had */
    unsigned char in[IN_CAP];
    size_t in_len;
    unsigned char *out;
    size_t out_off, out_len, out_cap; /* unsent bytes are out[out_off, out_len) */
    int *subs;                        /* task indices this client is subscribed to */
    int nsubs, subs_cap;
};

struct task {
    char id[16];
    long long seq;
    int *subs; /* client fds */
    int nsubs, subs_cap;
    unsigned char *frame; /* the current state: frame header + payload */
    size_t frame_len;
};

static int ntasks, ep, lfd;
static struct task tasks[MAX_TASKS];
static struct client **clients; /* by fd */
static int max_fd;
static int *dirty;
static int ndirty;
static char *data_prefix, *data_suffix; /* the TaskProgress around the stamp's digits */
static size_t prefix_len, suffix_len, id_at;
static long long dropped;
static char stdin_buf[4096];
static size_t stdin_len;
static int stdin_eof;

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) fail("memory", "out of memory");
    return p;
}

/* ---- output ---- */

static void queue_bytes(struct client *c, const void *p, size_t n) {
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off) { /* reclaim the sent head first */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            c->out_cap = (c->out_len + n) * 2;
            c->out = xrealloc(c->out, c->out_cap);
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    if (!c->dirty) {
        c->dirty = 1;
        dirty[ndirty++] = c->fd;
    }
}

/* A text (0x1) or control frame with a payload under 64 KiB: header written before the payload. */
static size_t frame_header(unsigned char *h, int opcode, size_t len) {
    h[0] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        h[1] = (unsigned char)len;
        return 2;
    }
    h[1] = 126;
    h[2] = (unsigned char)(len >> 8);
    h[3] = (unsigned char)len;
    return 4;
}

static void queue_frame(struct client *c, int opcode, const void *p, size_t len) {
    unsigned char h[4];
    queue_bytes(c, h, frame_header(h, opcode, len));
    queue_bytes(c, p, len);
}

static void close_client(struct client *c);

/* One send() of everything queued, unless the socket is still full from the last one (EPOLLOUT armed).
 * Returns -1 when the send failed and the client was closed (freed): the caller must not touch it. */
static int flush_client(struct client *c) {
    c->dirty = 0;
    if (c->want_out || c->out_off == c->out_len) return 0;
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        close_client(c);
        return -1;
    }
    if (n > 0) c->out_off += (size_t)n;
    if (c->out_off < c->out_len) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = c->fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = 1;
    }
    return 0;
}

static void flush_dirty(void) {
    for (int i = 0; i < ndirty; i++) {
        struct client *c = clients[dirty[i]];
        if (c && c->dirty) flush_client(c);
    }
    ndirty = 0;
}

/* ---- tasks ---- */

static void build_frame(struct task *t, int64_t stamp) {
    char head[96];
    int h = snprintf(head, sizeof head, "{\"type\":\"progress.update\",\"task_id\":\"%s\",\"seq\":%lld,\"data\":",
                     t->id, t->seq);
    char digits[24];
    int d = snprintf(digits, sizeof digits, "%0*lld", STAMP_DIGITS, (long long)stamp);
    size_t len = (size_t)h + prefix_len + (size_t)d + suffix_len + 1;
    unsigned char *f = t->frame;
    size_t hl = frame_header(f, 1, len);
    unsigned char *p = f + hl;
    memcpy(p, head, (size_t)h);
    p += h;
    memcpy(p, data_prefix, prefix_len);
    memcpy(p + id_at, t->id, 9); /* data.task_id */
    p += prefix_len;
    memcpy(p, digits, (size_t)d);
    p += d;
    memcpy(p, data_suffix, suffix_len);
    p += suffix_len;
    *p++ = '}';
    t->frame_len = (size_t)(p - f);
}

/* One update: a new state, framed once, queued for every subscriber (sent by the caller's flush). */
static void update(int i) {
    struct task *t = &tasks[i];
    t->seq++;
    build_frame(t, now_ns(CLOCK_REALTIME));
    for (int s = 0; s < t->nsubs; s++) {
        struct client *c = clients[t->subs[s]];
        if (c->out_len - c->out_off > OUT_CAP) {
            dropped++;
            continue;
        }
        queue_bytes(c, t->frame, t->frame_len);
    }
}

static int find(const int *v, int n, int x) {
    for (int i = 0; i < n; i++)
        if (v[i] == x) return i;
    return -1;
}

static void push(int **v, int *n, int *cap, int x) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *v = xrealloc(*v, (size_t)*cap * sizeof **v);
    }
    (*v)[(*n)++] = x;
}

static void remove_at(int *v, int *n, int i) { v[i] = v[--*n]; }

static void unsubscribe(struct client *c, int task) {
    int i = find(c->subs, c->nsubs, task);
    if (i < 0) return;
    remove_at(c->subs, &c->nsubs, i);
    struct task *t = &tasks[task];
    int j = find(t->subs, t->nsubs, c->fd);
    if (j >= 0) remove_at(t->subs, &t->nsubs, j);
}

/* ---- clients ---- */

static void close_client(struct client *c) {
    while (c->nsubs) unsubscribe(c, c->subs[0]);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    clients[c->fd] = NULL;
    free(c->out);
    free(c->subs);
    free(c);
}

/* Text message: subscribe / unsubscribe {"task_ids":["task-NNNN",...]}; anything else gets an error. */
static void on_text(struct client *c, const unsigned char *p, size_t len) {
    const unsigned char *end = p + len, *v = memmem(p, len, "\"type\"", 6);
    if (v) { /* the value of "type", whatever the spacing around the colon */
        v += 6;
        while (v < end && (*v == ' ' || *v == ':' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
    }
    size_t vlen = v ? (size_t)(end - v) : 0;
    int sub = vlen >= 11 && memcmp(v, "\"subscribe\"", 11) == 0;
    int unsub = vlen >= 13 && memcmp(v, "\"unsubscribe\"", 13) == 0;
    if (!sub && !unsub) {
        static const char err[] = "{\"type\":\"error\",\"code\":\"unknown_type\",\"message\":\"only subscribe and unsubscribe\"}";
        queue_frame(c, 1, err, sizeof err - 1);
        return;
    }
    int ids[256], n = 0;
    const unsigned char *q = p;
    while (n < 256 && (q = memmem(q, (size_t)(end - q), "\"task-", 6)) != NULL) {
        q += 6;
        int v = 0, digits = 0;
        while (q < end && *q >= '0' && *q <= '9' && digits < 5) v = v * 10 + (*q++ - '0'), digits++;
        if (digits == 4 && q < end && *q == '"' && v < ntasks) ids[n++] = v;
    }
    char reply[256 * 14 + 64];
    size_t r = (size_t)snprintf(reply, sizeof reply, "{\"type\":\"%s\",\"task_ids\":[", sub ? "subscribed" : "unsubscribed");
    for (int i = 0; i < n; i++) {
        if (sub) {
            if (find(c->subs, c->nsubs, ids[i]) < 0) {
                push(&c->subs, &c->nsubs, &c->subs_cap, ids[i]);
                push(&tasks[ids[i]].subs, &tasks[ids[i]].nsubs, &tasks[ids[i]].subs_cap, c->fd);
            }
        } else {
            unsubscribe(c, ids[i]);
        }
        r += (size_t)snprintf(reply + r, sizeof reply - r, "%s\"%s\"", i ? "," : "", tasks[ids[i]].id);
    }
    r += (size_t)snprintf(reply + r, sizeof reply - r, "]}");
    queue_frame(c, 1, reply, r);
    if (sub)
        for (int i = 0; i < n; i++) queue_bytes(c, tasks[ids[i]].frame, tasks[ids[i]].frame_len);
}

/* The upgrade request in c->in[0, len): answers 101 (or 400 and -1). */
static int handshake(struct client *c, size_t len) {
    const char *req = (const char *)c->in, *key = NULL;
    size_t key_len = 0;
    for (const char *line = req; line < req + len;) {
        const char *eol = memmem(line, (size_t)(req + len - line), "\r\n", 2);
        if (!eol) break;
        if ((size_t)(eol - line) > 18 && strncasecmp(line, "Sec-WebSocket-Key:", 18) == 0) {
            key = line + 18;
            while (key < eol && *key == ' ') key++;
            key_len = (size_t)(eol - key);
        }
        line = eol + 2;
    }
    if (!key || key_len == 0 || key_len > 64) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        queue_bytes(c, bad, sizeof bad - 1);
        return -1;
    }
    char joined[64 + sizeof WS_GUID];
    memcpy(joined, key, key_len);
    memcpy(joined + key_len, WS_GUID, sizeof WS_GUID - 1);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)joined, key_len + sizeof WS_GUID - 1, digest);
    unsigned char accept[32];
    EVP_EncodeBlock(accept, digest, SHA_DIGEST_LENGTH);
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    queue_bytes(c, resp, (size_t)n);
    char hello[64];
    n = snprintf(hello, sizeof hello, "{\"type\":\"connection.established\",\"client_id\":\"c%d\"}", c->fd);
    queue_frame(c, 1, hello, (size_t)n);
    c->open = 1;
    return 0;
}

/* Parses what c->in holds; returns -1 to close the client. */
static int parse(struct client *c) {
    size_t off = 0;
    if (!c->open) {
        unsigned char *eoh = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!eoh) return c->in_len == IN_CAP ? -1 : 0;
        off = (size_t)(eoh + 4 - c->in);
        if (handshake(c, off) < 0) return -1;
    }
    for (;;) {
        unsigned char *f = c->in + off;
        size_t avail = c->in_len - off;
        if (avail < 2) break;
        int opcode = f[0] & 0x0f;
        if (!(f[1] & 0x80)) return -1; /* client frames are masked */
        size_t plen = f[1] & 0x7f, h = 2;
        if (plen == 127) return -1; /* no frame of ours is that large */
        if (plen == 126) {
            if (avail < 4) break;
            plen = ((size_t)f[2] << 8) | f[3];
            h = 4;
        }
        if (avail < h + 4 + plen) {
            if (h + 4 + plen > IN_CAP) return -1;
            break;
        }
        unsigned char *mask = f + h, *p = f + h + 4;
        for (size_t i = 0; i < plen; i++) p[i] ^= mask[i & 3];
        if (opcode == 1) {
            on_text(c, p, plen);
        } else if (opcode == 8) {
            queue_frame(c, 8, p, plen < 2 ? plen : 2); /* on_readable sends it, then closes */
            return -1;
        } else if (opcode == 9) {
            queue_frame(c, 10, p, plen);
        }
        off += h + 4 + plen;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return 0;
}

static void on_readable(struct client *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            close_client(c);
            return;
        }
        if (n < 0) break;
        c->in_len += (size_t)n;
        if (parse(c) < 0) { /* whatever it queued (a 400, a close frame) goes first */
            if (flush_client(c) == 0) close_client(c);
            return;
        }
        if (c->in_len == IN_CAP) break;
    }
    if (c->dirty) flush_client(c);
}

static void on_writable(struct client *c) {
    c->want_out = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c->fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    flush_client(c);
}

static void accept_all(void) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        if (fd >= max_fd) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct client *c = calloc(1, sizeof *c);
        if (!c) fail("memory", "out of memory");
        c->fd = fd;
        clients[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

/* Services the sockets and stdin for at most timeout_ns (0: only what is ready; < 0: until something is). */
static void service(int64_t timeout_ns) {
    struct epoll_event evs[MAX_EVENTS];
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    int n = epoll_pwait2(ep, evs, MAX_EVENTS, timeout_ns < 0 ? NULL : &ts, NULL);
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == lfd) {
            accept_all();
        } else if (fd == STDIN_FILENO) {
            ssize_t r = read(STDIN_FILENO, stdin_buf + stdin_len, sizeof stdin_buf - 1 - stdin_len);
            if (r <= 0) {
                stdin_eof = 1;
                epoll_ctl(ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
            } else {
                stdin_len += (size_t)r;
            }
        } else if (clients[fd]) {
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                close_client(clients[fd]);
                continue;
            }
            if (evs[i].events & EPOLLOUT) on_writable(clients[fd]);
            if (clients[fd] && (evs[i].events & EPOLLIN)) on_readable(clients[fd]);
        }
    }
    flush_dirty();
}

/* The end of a run: what it sent, and the frames dropped for clients too far behind (counted per run). */
static void print_done(long long updates, int64_t t0, double late_ms) {
    printf("DONE {\"updates\":%lld,\"receivers\":0,\"dropped\":%lld,\"wall_s\":%.6f,\"late_ms\":%.3f}\n", updates,
           dropped, (now_ns(CLOCK_MONOTONIC) - t0) / 1e9, late_ms);
    fflush(stdout);
    dropped = 0;
}

static void run(double seconds, int period_ms) {
    int64_t t0 = now_ns(CLOCK_MONOTONIC), end = t0 + (int64_t)(seconds * 1e9);
    long long updates = 0;
    double late_ms = 0;
    if (period_ms > 0) {
        static struct schedule sched;
        schedule_start(&sched, seconds, period_ms, ntasks);
        int i;
        int64_t due, now;
        while (schedule_next(&sched, &i, &due)) {
            while ((now = now_ns(CLOCK_MONOTONIC)) < due) service(due - now);
            schedule_done(&sched, i, now);
            update(i);
            updates++;
            flush_dirty();
        }
        late_ms = sched.late_ms;
    } else {
        while (now_ns(CLOCK_MONOTONIC) < end) {
            for (int i = 0; i < ntasks; i++) update(i);
            updates += ntasks;
            flush_dirty();
            service(0);
        }
    }
    print_done(updates, t0, late_ms);
}

/* The burst shape (runner.c's `burst`): every task at the same instants; a client's frames of one instant go
 * out in one send, as the listener's of one round do. */
static void burst(double seconds, int period_ms) {
    int64_t t0 = now_ns(CLOCK_MONOTONIC), end = t0 + (int64_t)(seconds * 1e9), period = (int64_t)period_ms * 1000000;
    long long updates = 0;
    double late_ms = 0;
    for (int64_t at = t0; at < end; at += period) {
        int64_t now;
        while ((now = now_ns(CLOCK_MONOTONIC)) < at) service(at - now);
        if ((now - at) / 1e6 > late_ms) late_ms = (now - at) / 1e6;
        for (int i = 0; i < ntasks; i++) update(i);
        updates += ntasks;
        flush_dirty();
    }
    print_done(updates, t0, late_ms);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: %s TASKS TEMPLATE_FILE\n", argv[0]);
        return 2;
    }
    ntasks = atoi(argv[1]);
    if (ntasks <= 0 || ntasks > MAX_TASKS) fail("arguments", "TASKS must be 1..10000");
    char *data = read_file(argv[2]);
    const char *stamp = strstr(data, "\"t=1700000000000000000\"");
    const char *tid = strstr(data, "\"task_id\":\"task-0000\"");
    if (!stamp || !tid || tid > stamp) fail("template", "expected \"task_id\":\"task-0000\" then a \"t=...\" message");
    prefix_len = (size_t)(stamp + 3 - data);
    data_prefix = data;
    id_at = (size_t)(tid - data) + 11;
    data_suffix = (char *)stamp + 3 + STAMP_DIGITS;
    suffix_len = strlen(data_suffix);
    if (96 + prefix_len + STAMP_DIGITS + 2 + suffix_len >= 65536) /* frame_header writes 16-bit lengths only */
        fail("template", "the progress.update message would not fit a frame under 64 KiB");

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    max_fd = rl.rlim_cur > 1 << 20 ? 1 << 20 : (int)rl.rlim_cur;
    clients = calloc((size_t)max_fd, sizeof *clients);
    dirty = calloc((size_t)max_fd, sizeof *dirty);
    if (!clients || !dirty) fail("memory", "out of memory");
    for (int i = 0; i < ntasks; i++) {
        snprintf(tasks[i].id, sizeof tasks[i].id, "task-%04d", i);
        tasks[i].frame = malloc(4 + 128 + prefix_len + 24 + suffix_len);
        if (!tasks[i].frame) fail("memory", "out of memory");
        /* the initial state: stamp 0 (the harness takes no latency sample from it) */
        build_frame(&tasks[i], 0);
    }

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
        fail("listen", strerror(errno));
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.fd = STDIN_FILENO;
    epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev);
    printf("READY {\"port\":%d,\"pid\":%d}\n", ntohs(addr.sin_port), (int)getpid());

    for (;;) {
        char *nl;
        while ((nl = memchr(stdin_buf, '\n', stdin_len)) != NULL) {
            *nl = 0;
            double seconds;
            int period;
            if (sscanf(stdin_buf, "run %lf %d", &seconds, &period) == 2 && seconds > 0 && seconds <= 600 &&
                period >= 0) {
                run(seconds, period);
            } else if (sscanf(stdin_buf, "burst %lf %d", &seconds, &period) == 2 && seconds > 0 && seconds <= 600 &&
                       period > 0) {
                burst(seconds, period);
            } else if (strncmp(stdin_buf, "quit", 4) == 0) {
                return 0;
            } else {
                printf("ERROR {\"line\":\"bad command\"}\n");
            }
            size_t used = (size_t)(nl + 1 - stdin_buf);
            memmove(stdin_buf, nl + 1, stdin_len - used);
            stdin_len -= used;
        }
        if (stdin_eof || stdin_len == sizeof stdin_buf - 1) return 0;
        service(-1);
    }
}
