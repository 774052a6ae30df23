/*
 * fleet_stress — one engine with the listener AND Redis write-through, driven from every side at once in
 * one process, then checked exactly. Built for the ThreadSanitizer and AddressSanitizer runs
 * (tests/c/tsan.sh, tests/c/asan.sh), which start the redis-server it writes to.
 *
 * In one process, concurrently:
 *   runners      R threads, each creating T tasks one after another (batch ids, three templates, options)
 *                and driving each: stage updates, progress_update steps with message "sSTEP", logs (direct and
 *                as "log" events), preview pixels on some tasks, a step counter on others (attach, relaxed
 *                atomic stores, detach), then complete / fail / fail by event / cancel; after that one update
 *                that must be refused (PROGRESS_E_STATE) and a log entry (accepted on a finished task).
 *   stayers      3 WebSocket clients connected from before the first task to the end: one subscribed to "*",
 *                one to "*" that reads in bursts with long pauses (a slow client), one subscribed
 *                by id to every task before any exists.
 *   sessions     N WebSocket client threads that join and leave all run long: connect (RFC 6455 handshake,
 *                masked client frames), subscribe to "*" or to some tasks (existing and future), ping, read,
 *                get_progress, get_batch_progress, unsubscribe / subscribe again, stop reading for a while,
 *                then leave abruptly (close, RST, half a frame, shutdown) or with a close handshake.
 *   rest         2 threads GETting tasks, logs, history, batches, /metrics, /healthz and a missing task over
 *                keep-alive and fresh connections.
 *   main         after the runners: the final checks below; then 8 more tasks left executing (resource samples
 *                every 100 ms, a step counter attached whose last value only close reads, a large preview queued
 *                right before close); then progress_engine_close() with the stayers and sessions still
 *                connected; then what Redis holds.
 *
 * Checks (each failure is one "FAIL subject: what" line):
 *   - every call a runner makes returns what the contract says (OK, or E_STATE / E_RANGE / E_NOT_FOUND for the
 *     deliberately bad ones), and the engine's invalid_updates counts exactly those;
 *   - each task's final state (status, error, current stage, the stepped stage's progress and message, seq)
 *     read with progress_task_get, over REST and from Redis after close equals what its runner last did; seq
 *     is the one the runner saw right after its terminal call (tasks with previews: up to 3 more, a preview
 *     attached after the end), and the same in every view;
 *   - every WebSocket client: the handshake's Sec-WebSocket-Accept; server frames unmasked, no RSV bits;
 *     progress.update seq strictly increasing per task within a subscription; data.seq == seq; a subscribe
 *     delivers the current state of every task that existed before it, ahead of the pong of a ping sent right
 *     after; progress.current's seq >= any seq seen before asking; no error message; no status before the
 *     terminal one carries a seq >= the terminal seq, no terminal status a lower one, and no other terminal status;
 *   - every stayer (the slow one too) ends with the final state of every task it watches;
 *   - logs: the runner's entries, all of them and in order, via progress_task_logs, REST and Redis;
 *   - batches: C and REST counts by status equal the runners' outcomes; Redis holds each batch's members;
 *   - once the sessions have left, /metrics shows exactly the stayers' connections and subscriptions (no
 *     connection or subscription left behind by the abrupt disconnects);
 *   - progress_engine_close() closes the stayers' and sessions' connections, and the port refuses afterwards;
 *   - Redis after close: each task's state (seq, status), last stream entry (its seq), the runner's log entries,
 *     batch sets, no heartbeat left, the registered template; each task left executing holds the value close read
 *     from its counter; no Redis command error, no dropped write or log.
 *
 * Usage: fleet_stress REDIS_PORT [runners] [tasks per runner] [steps (power of 2)] [sessions] [pace us]
 * (default 4 x 12 tasks x 128 steps, 6 sessions, 1000 us between steps: about 4 s; tests/test_c.py runs that, the
 * sanitizer scripts run 4 x 60 (TSan) or 4 x 120 (ASan) x 256 with 10 sessions). Redis keys go under a namespace of the run's own
 * ("fleet-PID-TIME"), so a redis-server may be shared. Exit status 0 when every check passed.
 */
#define _GNU_SOURCE

#include <progress.h>

#include "json_scan.h"

#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_TASKS 512
#define MAX_SESSIONS 32
#define STAYERS 3
#define REST_THREADS 2
#define BATCHES 5

/* ---- Failures, time, randomness ------------------------------------------------------------------- */

static atomic_int failures;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

static void __attribute__((format(printf, 2, 3))) fail(const char *subject, const char *fmt, ...)
{
    int n = atomic_fetch_add(&failures, 1);
    if (n >= 200) /* one line per failed check, but not a flood when everything fails */
        return;
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&print_lock);
    printf("FAIL %s: ", subject);
    vprintf(fmt, ap);
    printf("\n");
    pthread_mutex_unlock(&print_lock);
    va_end(ap);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint32_t rnd(uint32_t *state) /* xorshift32 */
{
    uint32_t x = *state ? *state : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

static int chance(uint32_t *state, int percent) { return (int)(rnd(state) % 100) < percent; }

/* ---- Minimal JSON reading: json_scan.h, and ---------------------------------------------------- */

static double json_number(const char *obj, const char *key)
{
    const char *v = json_member(obj, key);
    char *end;
    double d = v ? strtod(v, &end) : NAN;
    return v && end != v ? d : NAN;
}

/* A string member copied raw (no unescaping: the ids and messages of this program need none); "" if missing,
 * "null" for null. */
static void json_str(const char *obj, const char *key, char *out, size_t cap)
{
    const char *v = json_member(obj, key);
    out[0] = '\0';
    if (!v)
        return;
    if (strncmp(v, "null", 4) == 0) {
        snprintf(out, cap, "null");
        return;
    }
    if (*v != '"')
        return;
    const char *end = skip_string(v);
    if (!end)
        return;
    size_t n = (size_t)(end - v - 2);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, v + 1, n);
    out[n] = '\0';
}

/* The stage object "stages"[index] of a TaskProgress. */
static const char *json_stage(const char *task, long long index)
{
    char key[24];
    snprintf(key, sizeof key, "%lld", index);
    return json_member(json_member(task, "stages"), key);
}

/* ---- Tasks: what the runners do, what the clients see ------------------------------------------------ */

enum { END_COMPLETE, END_FAIL, END_FAIL_EVENT, END_CANCEL, END_KINDS };
static const char *const end_status[END_KINDS] = {"completed", "failed", "failed", "cancelled"};

enum { ST_NONE, ST_QUEUED, ST_EXECUTING, ST_COMPLETED, ST_FAILED, ST_CANCELLED, ST_OTHER };

static int status_code(const char *s)
{
    static const char *const names[] = {"", "queued", "executing", "completed", "failed", "cancelled"};
    for (int i = 1; i < 6; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return ST_OTHER;
}

static int is_terminal(int code) { return code == ST_COMPLETED || code == ST_FAILED || code == ST_CANCELLED; }

struct task {
    char id[32];
    char batch[16];
    int runner, index, end;
    int preview, counter, stage_first, template_kind;
    long long last_step; /* the last step its runner sends */
    _Alignas(16) volatile long long counter_mem[2];
    atomic_int created; /* set (release) once progress_task_create returned OK */
    atomic_int done;    /* set (release) once the fields below are final */
    /* Written by the runner before `done`: */
    long long main_stage;   /* the stage the steps went to */
    long long terminal_seq; /* seq right after the terminal call */
    int logs;               /* log entries of the runner ("fs-log ... nK", K = 1..logs) */
    char error[48];         /* the expected "error" (failed / cancelled) */
    /* Observed by every WebSocket client: */
    atomic_llong max_seq_seen;
    atomic_llong max_live_seq_seen;     /* highest seq seen with a non-terminal status */
    atomic_llong min_terminal_seq_seen; /* lowest seq seen with a terminal status */
    atomic_int terminal_statuses_seen;  /* bit per terminal status code */
    /* Final state, read by main after the runners: */
    long long final_seq;
};

static struct task tasks[MAX_TASKS];
static int ntasks, nrunners, tasks_per_runner, sessions_n;
static long long steps;
static long pace_us;
static progress_engine *engine;
static int port, redis_port;
static char ns[32]; /* the Redis namespace: fresh per run, so nothing an earlier run left is read back */
static atomic_int invalid_calls;  /* calls made to be refused, which invalid_updates must count */
static atomic_int runners_done;   /* set once every runner finished */
static atomic_int quiesce;        /* sessions: leave and wait (while set) */
static atomic_int sessions_idle;  /* sessions waiting while quiesce is set */
static atomic_int closing;        /* progress_engine_close is about to run: connection errors are expected */
static atomic_int stop_clients;   /* every client thread ends */
static double close_started;
/* Figures. */
static atomic_long ws_messages, ws_updates, ws_sessions, ws_slow_pauses, rest_requests, runner_calls;
static atomic_long subscribe_ms_max; /* the longest subscribe, from sending it to the pong after the current states */

static struct task *task_by_id(const char *id)
{
    int r, t;
    char tail;
    if (sscanf(id, "fs-r%d-t%d%c", &r, &t, &tail) != 2 || r < 0 || r >= nrunners || t < 0 || t >= tasks_per_runner)
        return NULL;
    struct task *task = &tasks[r * tasks_per_runner + t];
    return strcmp(task->id, id) == 0 ? task : NULL;
}

static void atomic_max(atomic_llong *a, long long v)
{
    long long cur = atomic_load(a);
    while (v > cur && !atomic_compare_exchange_weak(a, &cur, v))
        ;
}

static void atomic_min(atomic_llong *a, long long v)
{
    long long cur = atomic_load(a);
    while (v < cur && !atomic_compare_exchange_weak(a, &cur, v))
        ;
}

/* ---- SHA-1 and base64, for the WebSocket handshake (RFC 6455 §4) ---------------------------------- */

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const unsigned char *data, size_t len, unsigned char out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *msg = calloc(total, 1);
    memcpy(msg, data, len);
    msg[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        msg[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)msg[off + 4 * i] << 24 | (uint32_t)msg[off + 4 * i + 1] << 16 |
                   (uint32_t)msg[off + 4 * i + 2] << 8 | msg[off + 4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) {
                f = (b & c) | (~b & d);
                k = 0x5A827999;
            } else if (i < 40) {
                f = b ^ c ^ d;
                k = 0x6ED9EBA1;
            } else if (i < 60) {
                f = (b & c) | (b & d) | (c & d);
                k = 0x8F1BBCDC;
            } else {
                f = b ^ c ^ d;
                k = 0xCA62C1D6;
            }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d;
            d = c;
            c = rol(b, 30);
            b = a;
            a = t;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
    }
    free(msg);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

static void base64(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = i + 1 < len ? abc[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

/* ---- Sockets ------------------------------------------------------------------------------------------ */

/* A loopback TCP connection to `p`; -1 with errno set. rcvbuf > 0 shrinks the receive buffer (slow clients). */
static int tcp_connect(int p, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Sends everything by `deadline`; 0 on success. */
static int send_all(int fd, const void *data, size_t len, double deadline)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        double left = deadline - now_s();
        if (left <= 0)
            return -1;
        struct pollfd pfd = {fd, POLLOUT, 0};
        poll(&pfd, 1, (int)(left * 1000) + 1);
    }
    return 0;
}

/* Waits for input until `deadline`; then reads what is there into buf. >0 bytes, 0 timeout, -1 closed/error. */
static ssize_t recv_some(int fd, void *buf, size_t cap, double deadline)
{
    for (;;) {
        double left = deadline - now_s();
        struct pollfd pfd = {fd, POLLIN, 0};
        int r = poll(&pfd, 1, left > 0 ? (int)(left * 1000) + 1 : 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return 0;
        ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT);
        if (n > 0)
            return n;
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        return -1;
    }
}

/* ---- A WebSocket client (RFC 6455) ------------------------------------------------------------------- */

struct ws {
    int fd;
    unsigned char *in; /* received bytes not parsed yet */
    size_t in_len, in_cap;
    char *msg; /* a data message being reassembled */
    size_t msg_len, msg_cap;
    int msg_open;
    int closed;     /* the server closed (close frame or EOF) */
    int close_sent; /* this client sent a close frame (the server's is not echoed then) */
    int close_code; /* of the server's close frame, 0 if none */
    char close_reason[124];
    uint32_t rng;
    char who[48];
};

static void ws_reset(struct ws *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    w->in_len = w->msg_len = 0;
    w->msg_open = w->closed = w->close_code = w->close_sent = 0;
}

static void ws_free(struct ws *w)
{
    ws_reset(w);
    free(w->in);
    free(w->msg);
    w->in = NULL;
    w->msg = NULL;
    w->in_cap = w->msg_cap = 0;
}

static void grow(void **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    *buf = realloc(*buf, c);
    *cap = c;
}

/* A masked client frame. */
static int ws_send_frame(struct ws *w, int opcode, const void *payload, size_t len, int fin)
{
    unsigned char head[14], mask[4];
    size_t h = 0;
    head[h++] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        head[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = (unsigned char)(len >> 8);
        head[h++] = (unsigned char)len;
    } else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            head[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    uint32_t m = rnd(&w->rng);
    memcpy(mask, &m, 4);
    memcpy(head + h, mask, 4);
    h += 4;
    unsigned char *frame = malloc(h + len + 1);
    memcpy(frame, head, h);
    for (size_t i = 0; i < len; i++)
        frame[h + i] = ((const unsigned char *)payload)[i] ^ mask[i % 4];
    int rc = send_all(w->fd, frame, h + len, now_s() + 5);
    free(frame);
    return rc;
}

static int ws_send_text(struct ws *w, const char *text) { return ws_send_frame(w, 0x1, text, strlen(text), 1); }

/* Connects and upgrades; checks the 101 and Sec-WebSocket-Accept. 0 on success; -1 (with `why`) otherwise. */
static int ws_open(struct ws *w, const char *client_id, int rcvbuf, char *why, size_t why_cap)
{
    ws_reset(w);
    w->fd = tcp_connect(port, rcvbuf);
    if (w->fd < 0) {
        snprintf(why, why_cap, "connect: %s", strerror(errno));
        return -1;
    }
    unsigned char nonce[16], digest[20];
    for (int i = 0; i < 16; i++)
        nonce[i] = (unsigned char)rnd(&w->rng);
    char key[32], accept_want[32], accept_input[96], request[512];
    base64(nonce, 16, key);
    snprintf(accept_input, sizeof accept_input, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1((const unsigned char *)accept_input, strlen(accept_input), digest);
    base64(digest, 20, accept_want);
    int n = snprintf(request, sizeof request,
                     "GET /api/v1/progress/ws?client_id=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     client_id, port, key);
    double deadline = now_s() + 10;
    if (send_all(w->fd, request, (size_t)n, deadline) != 0) {
        snprintf(why, why_cap, "sending the upgrade request: %s", strerror(errno));
        return -1;
    }
    char head[8192];
    size_t len = 0;
    char *end = NULL;
    while (!end) {
        if (len + 1 >= sizeof head) {
            snprintf(why, why_cap, "upgrade response headers over %zu bytes", sizeof head);
            return -1;
        }
        ssize_t got = recv_some(w->fd, head + len, sizeof head - 1 - len, deadline);
        if (got <= 0) {
            snprintf(why, why_cap, "upgrade response: %s", got == 0 ? "timed out" : "connection closed");
            return -1;
        }
        len += (size_t)got;
        head[len] = '\0';
        end = strstr(head, "\r\n\r\n");
    }
    *end = '\0';
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        snprintf(why, why_cap, "upgrade answered \"%.60s\"", head);
        return -1;
    }
    const char *accept = NULL;
    for (char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n"))
        if (strncasecmp(line + 2, "Sec-WebSocket-Accept:", 21) == 0)
            accept = line + 2 + 21;
    char got_accept[64] = "";
    if (accept) {
        while (*accept == ' ')
            accept++;
        size_t k = strcspn(accept, "\r\n");
        snprintf(got_accept, sizeof got_accept, "%.*s", (int)(k < 63 ? k : 63), accept);
    }
    if (strcmp(got_accept, accept_want) != 0) {
        snprintf(why, why_cap, "Sec-WebSocket-Accept \"%s\", expected \"%s\"", got_accept, accept_want);
        return -1;
    }
    size_t rest = len - (size_t)(end + 4 - head);
    grow((void **)&w->in, &w->in_cap, rest + 1);
    memcpy(w->in, end + 4, rest);
    w->in_len = rest;
    return 0;
}

/* The next data message (NUL-terminated, valid until the next call) by `deadline`.
 * Returns 1 with *out set, 0 on timeout, -1 once the connection is closed (w->closed, w->close_code). */
static int ws_recv(struct ws *w, double deadline, char **out)
{
    for (;;) {
        /* A whole frame in `in`? */
        if (w->in_len >= 2) {
            unsigned char b0 = w->in[0], b1 = w->in[1];
            size_t h = 2;
            uint64_t len = b1 & 0x7f;
            if (len == 126) {
                h = 4;
                len = w->in_len >= 4 ? (uint64_t)w->in[2] << 8 | w->in[3] : 0;
            } else if (len == 127) {
                h = 10;
                len = 0;
                for (int i = 0; i < 8 && w->in_len >= 10; i++)
                    len = len << 8 | w->in[2 + i];
            }
            if (w->in_len >= h && w->in_len >= h + len) {
                int opcode = b0 & 0x0f, fin = b0 & 0x80;
                if (b1 & 0x80)
                    fail(w->who, "server frame is masked (RFC 6455 §5.1: a server must not mask)");
                if (b0 & 0x70)
                    fail(w->who, "server frame has RSV bits 0x%x set without an extension", b0 & 0x70);
                unsigned char *payload = w->in + h;
                size_t consumed = h + (size_t)len;
                int result = 0;
                if (opcode == 0x8) { /* close: echo it, then the connection is over */
                    w->close_code = len >= 2 ? payload[0] << 8 | payload[1] : 1005;
                    snprintf(w->close_reason, sizeof w->close_reason, "%.*s", len > 2 ? (int)len - 2 : 0, payload + 2);
                    if (!w->close_sent)
                        ws_send_frame(w, 0x8, payload, len >= 2 ? 2 : 0, 1);
                    w->close_sent = w->closed = 1;
                    result = -1;
                } else if (opcode == 0x9) { /* ping */
                    ws_send_frame(w, 0xA, payload, (size_t)len, 1);
                } else if (opcode == 0xA) { /* pong */
                } else if (opcode == 0x1 || opcode == 0x2 || opcode == 0x0) {
                    if ((opcode == 0x0) != (w->msg_open != 0))
                        fail(w->who, "%s frame out of sequence", opcode ? "data" : "continuation");
                    grow((void **)&w->msg, &w->msg_cap, w->msg_len + (size_t)len + 1);
                    memcpy(w->msg + w->msg_len, payload, (size_t)len);
                    w->msg_len += (size_t)len;
                    w->msg_open = !fin;
                    if (fin) {
                        w->msg[w->msg_len] = '\0';
                        w->msg_len = 0;
                        *out = w->msg;
                        result = 1;
                    }
                } else {
                    fail(w->who, "server frame with unknown opcode 0x%x", opcode);
                }
                memmove(w->in, w->in + consumed, w->in_len - consumed);
                w->in_len -= consumed;
                if (result)
                    return result;
                continue;
            }
        }
        if (w->closed)
            return -1;
        grow((void **)&w->in, &w->in_cap, w->in_len + 65536);
        ssize_t got = recv_some(w->fd, w->in + w->in_len, w->in_cap - w->in_len, deadline);
        if (got == 0)
            return 0;
        if (got < 0) {
            w->closed = 1;
            return -1;
        }
        w->in_len += (size_t)got;
    }
}

/* ---- WebSocket message checks, shared by stayers and sessions ------------------------------------------ */

struct view {
    struct ws ws;
    long long last_seq[MAX_TASKS]; /* per subscription epoch; 0 = nothing seen since (re)subscribing */
    long long max_seq[MAX_TASKS];  /* over the whole connection */
    int status[MAX_TASKS];         /* last status seen */
    int wildcard;
    long long got_current;
    long long pings, pongs, messages, updates, logs;
};

static int view_ping(struct view *v)
{
    v->pings++;
    return ws_send_text(&v->ws, "{\"type\":\"ping\"}");
}

/* Checks one progress.update / progress.current; returns its task or NULL. */
static struct task *check_state_message(struct view *v, const char *m, const char *type, int is_update)
{
    char id[64], data_id[64], status[24];
    json_str(m, "task_id", id, sizeof id);
    struct task *t = task_by_id(id);
    if (!t) {
        if (strncmp(id, "fs-left-", 8) != 0) /* left executing at close: not checked here */
            fail(v->ws.who, "%s for unknown task \"%s\": %.200s", type, id, m);
        return NULL;
    }
    long long seq = json_int(m, "seq");
    const char *data = json_member(m, "data");
    json_str(data, "task_id", data_id, sizeof data_id);
    json_str(data, "status", status, sizeof status);
    long long data_seq = json_int(data, "seq");
    int code = status_code(status);
    if (seq <= 0 || data_seq != seq || strcmp(data_id, id) != 0 || code == ST_OTHER)
        fail(v->ws.who, "%s of %s: seq %lld, data.seq %lld, data.task_id \"%s\", status \"%s\"", type, id, seq, data_seq,
             data_id, status);
    int i = (int)(t - tasks);
    if (is_update) {
        if (seq <= v->last_seq[i])
            fail(v->ws.who, "progress.update of %s: seq %lld after %lld (must increase strictly)", id, seq,
                 v->last_seq[i]);
        v->last_seq[i] = seq;
    }
    if (seq >= v->max_seq[i]) { /* the newest state seen (a progress.current may be older than an update) */
        v->max_seq[i] = seq;
        v->status[i] = code;
    }
    atomic_max(&t->max_seq_seen, seq);
    if (is_terminal(code)) {
        atomic_min(&t->min_terminal_seq_seen, seq);
        atomic_fetch_or(&t->terminal_statuses_seen, 1 << code);
    } else {
        atomic_max(&t->max_live_seq_seen, seq);
    }
    return t;
}

/* Handles a message; returns its type code (below). Task ids of "unsubscribed" reset their epochs. */
enum { M_OTHER, M_ESTABLISHED, M_SUBSCRIBED, M_UNSUBSCRIBED, M_UPDATE, M_CURRENT, M_BATCH, M_LOG, M_PONG, M_ERROR };

static int handle_message(struct view *v, const char *m, struct task **about)
{
    char type[32];
    json_str(m, "type", type, sizeof type);
    v->messages++;
    atomic_fetch_add(&ws_messages, 1);
    *about = NULL;
    if (strcmp(type, "progress.update") == 0) {
        v->updates++;
        atomic_fetch_add(&ws_updates, 1);
        *about = check_state_message(v, m, type, 1);
        return M_UPDATE;
    }
    if (strcmp(type, "progress.current") == 0) {
        *about = check_state_message(v, m, type, 0);
        return M_CURRENT;
    }
    if (strcmp(type, "task.log") == 0) {
        char id[64];
        json_str(m, "task_id", id, sizeof id);
        const char *entry = json_member(m, "entry");
        if ((!task_by_id(id) && strncmp(id, "fs-left-", 8) != 0) || !json_member(entry, "message") ||
            !json_member(entry, "level"))
            fail(v->ws.who, "bad task.log: %.200s", m);
        v->logs++;
        return M_LOG;
    }
    if (strcmp(type, "pong") == 0) {
        v->pongs++;
        return M_PONG;
    }
    if (strcmp(type, "subscribed") == 0)
        return M_SUBSCRIBED;
    if (strcmp(type, "unsubscribed") == 0) {
        const char *ids = json_member(m, "task_ids");
        for (const char *p = ids; p && *p && *p != ']'; p++) {
            if (*p != '"')
                continue;
            const char *end = skip_string(p);
            if (!end)
                break;
            char id[64];
            snprintf(id, sizeof id, "%.*s", (int)(end - p - 2), p + 1);
            if (strcmp(id, "*") == 0) {
                memset(v->last_seq, 0, sizeof v->last_seq);
                v->wildcard = 0;
            } else if (task_by_id(id)) {
                v->last_seq[task_by_id(id) - tasks] = 0;
            }
            p = end - 1;
        }
        return M_UNSUBSCRIBED;
    }
    if (strcmp(type, "batch.progress") == 0) {
        const char *data = json_member(m, "data");
        if (json_int(data, "total_tasks") < 0 || !json_member(data, "tasks"))
            fail(v->ws.who, "bad batch.progress: %.200s", m);
        return M_BATCH;
    }
    if (strcmp(type, "connection.established") == 0)
        return M_ESTABLISHED;
    if (strcmp(type, "error") == 0) {
        fail(v->ws.who, "server error message: %.300s", m);
        return M_ERROR;
    }
    fail(v->ws.who, "unknown message type \"%s\": %.200s", type, m);
    return M_OTHER;
}

/* Opens the view's connection and reads connection.established. */
static int view_open(struct view *v, const char *client_id, int rcvbuf)
{
    char why[200], *m;
    memset(v->last_seq, 0, sizeof v->last_seq);
    memset(v->max_seq, 0, sizeof v->max_seq);
    memset(v->status, 0, sizeof v->status);
    v->wildcard = 0;
    v->pings = v->pongs = 0;
    if (ws_open(&v->ws, client_id, rcvbuf, why, sizeof why) != 0) {
        if (!atomic_load(&closing))
            fail(v->ws.who, "WebSocket open: %s", why);
        return -1;
    }
    int r = ws_recv(&v->ws, now_s() + 10, &m);
    struct task *t;
    if (r != 1 || handle_message(v, m, &t) != M_ESTABLISHED) {
        if (!atomic_load(&closing))
            fail(v->ws.who, "no connection.established first (%s)", r == 1 ? m : r == 0 ? "timed out" : "closed");
        return -1;
    }
    return 0;
}

/* Subscribes and sends a ping right after; reads to its pong (pings sent earlier are answered first) and checks that the current state of every task
 * created before the subscribe (`existed`) arrived ahead of it. ids == NULL: "*". */
static int view_subscribe(struct view *v, const int *ids, int n)
{
    static const size_t cap = 64 + MAX_TASKS * 40;
    char *req = malloc(cap);
    unsigned char *existed = calloc(MAX_TASKS, 1), *seen = calloc(MAX_TASKS, 1);
    size_t len = (size_t)snprintf(req, cap, "{\"type\":\"subscribe\",\"task_ids\":[");
    if (!ids) {
        len += (size_t)snprintf(req + len, cap - len, "\"*\"");
        for (int i = 0; i < ntasks; i++)
            existed[i] = (unsigned char)atomic_load_explicit(&tasks[i].created, memory_order_acquire);
        v->wildcard = 1;
    }
    for (int k = 0; ids && k < n; k++) {
        len += (size_t)snprintf(req + len, cap - len, "%s\"%s\"", k ? "," : "", tasks[ids[k]].id);
        existed[ids[k]] = (unsigned char)atomic_load_explicit(&tasks[ids[k]].created, memory_order_acquire);
    }
    snprintf(req + len, cap - len, "]}");
    int rc = -1;
    if (ws_send_text(&v->ws, req) != 0 || view_ping(v) != 0)
        goto out;
    double started = now_s(), deadline = started + 20;
    int subscribed = 0;
    for (;;) {
        char *m;
        struct task *t;
        int r = ws_recv(&v->ws, deadline, &m);
        if (r != 1) {
            if (!atomic_load(&closing))
                fail(v->ws.who, "subscribe: %s before the pong (close code %d \"%s\")",
                     r == 0 ? "timed out" : "connection closed", v->ws.close_code, v->ws.close_reason);
            goto out;
        }
        int type = handle_message(v, m, &t);
        if (type == M_SUBSCRIBED)
            subscribed = 1;
        if (type == M_UPDATE && t)
            seen[t - tasks] = 1;
        if (type == M_PONG && v->pongs == v->pings)
            break;
    }
    long ms = (long)((now_s() - started) * 1000);
    for (long cur = atomic_load(&subscribe_ms_max); ms > cur && !atomic_compare_exchange_weak(&subscribe_ms_max, &cur, ms);)
        ;
    if (!subscribed)
        fail(v->ws.who, "no \"subscribed\" reply before the pong");
    for (int i = 0; i < ntasks; i++)
        if (existed[i] && !seen[i])
            fail(v->ws.who, "subscribe: no progress.update with the current state of %s (created before the "
                            "subscribe) ahead of the pong",
                 tasks[i].id);
    rc = 0;
out:
    free(req);
    free(existed);
    free(seen);
    return rc;
}

/* ---- Stayers: connected from before the first task to the end --------------------------------------- */

struct stayer {
    pthread_t thread;
    int kind; /* 0: "*"; 1: "*", slow; 2: every task by id */
    struct view v;
    atomic_int ready;   /* subscribed */
    atomic_int ended;   /* its connection ended (after close: expected) */
    double ended_at;
    /* Per task: last seq and status seen, for main. */
    atomic_llong seq[MAX_TASKS];
    atomic_int status[MAX_TASKS];
};

static struct stayer stayers[STAYERS];

static void *stayer_main(void *arg)
{
    struct stayer *s = arg;
    struct view *v = &s->v;
    int all[MAX_TASKS];
    for (int i = 0; i < ntasks; i++)
        all[i] = i;
    char cid[32];
    snprintf(cid, sizeof cid, "stayer-%d", s->kind);
    /* The slow stayer is slow by its pauses, not by a small receive buffer: with a 4 KiB window every few messages
     * wait for a delayed ACK (about 40 ms on loopback), a few dozen messages a second, which no reader keeps up
     * with here (slow sessions use 16 KiB ones and need not catch up). */
    if (view_open(v, cid, 0) != 0 || view_subscribe(v, s->kind == 2 ? all : NULL, ntasks) != 0) {
        atomic_store(&s->ended, 1);
        atomic_store(&s->ready, 1);
        return NULL;
    }
    atomic_store(&s->ready, 1);
    uint32_t rng = 1234u + (uint32_t)s->kind;
    double next_get = now_s() + 0.2;
    long long asked_seq = -1;
    int asked = -1;
    for (;;) {
        /* The slow one reads 150 ms, then stops reading for 0.2-0.7 s, until the runners are done: slow, but not so
         * slow that its backlog passes the listener's bound (10,000 messages, then close 4008) on a loaded machine. */
        double burst_end = now_s() + (s->kind == 1 && !atomic_load(&runners_done) ? 0.15 : 0.25);
        int r = 0;
        char *m;
        while ((r = ws_recv(&v->ws, burst_end, &m)) == 1) {
            struct task *t;
            int type = handle_message(v, m, &t);
            if (type == M_CURRENT && t && t - tasks == asked) {
                if (json_int(m, "seq") < asked_seq)
                    fail(v->ws.who, "progress.current of %s: seq %lld below %lld seen before asking", t->id,
                         json_int(m, "seq"), asked_seq);
                asked = -1;
            }
            if ((type == M_UPDATE || type == M_CURRENT) && t) {
                int i = (int)(t - tasks);
                atomic_store(&s->seq[i], v->max_seq[i]);
                atomic_store(&s->status[i], v->status[i]);
            }
        }
        if (r < 0 || atomic_load(&stop_clients))
            break;
        if (s->kind == 2 && now_s() > next_get && asked < 0) { /* get_progress of a created task */
            int i = (int)(rnd(&rng) % (uint32_t)ntasks);
            if (atomic_load_explicit(&tasks[i].created, memory_order_acquire)) {
                char req[96];
                snprintf(req, sizeof req, "{\"type\":\"get_progress\",\"task_id\":\"%s\"}", tasks[i].id);
                asked = i;
                asked_seq = v->max_seq[i];
                ws_send_text(&v->ws, req);
            }
            next_get = now_s() + 0.2;
        }
        if (s->kind == 1 && !atomic_load(&runners_done)) {
            atomic_fetch_add(&ws_slow_pauses, 1);
            sleep_us(200000 + (long)(rnd(&rng) % 500000));
        }
    }
    s->ended_at = now_s();
    atomic_store(&s->ended, 1);
    if (!atomic_load(&closing))
        fail(v->ws.who, "connection ended before progress_engine_close (close code %d \"%s\")", v->ws.close_code,
             v->ws.close_reason);
    ws_reset(&v->ws);
    return NULL;
}

/* ---- Sessions: clients that join and leave ------------------------------------------------------------ */

struct session {
    pthread_t thread;
    int index;
    struct view v;
    long long sessions;
};

static struct session sessions[MAX_SESSIONS];

/* Ends the connection in one of several ways (some abrupt). */
static void session_leave(struct session *s, uint32_t *rng)
{
    struct ws *w = &s->v.ws;
    switch (rnd(rng) % 5) {
    case 0: { /* RST: SO_LINGER 0 with unread data likely in the buffer */
        struct linger lg = {1, 0};
        setsockopt(w->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        break;
    }
    case 1: { /* a proper close handshake: the server must answer with a close frame */
        unsigned char code[2] = {0x03, 0xE8}; /* 1000 */
        w->close_sent = 1;
        if (ws_send_frame(w, 0x8, code, 2, 1) == 0) {
            char *m;
            double deadline = now_s() + 10;
            int r;
            while ((r = ws_recv(w, deadline, &m)) == 1)
                ;
            if (r == 0 && !atomic_load(&closing))
                fail(w->who, "no close frame or EOF within 10 s of the client's close frame");
        }
        break;
    }
    case 2: { /* half a frame: a header announcing 100 bytes and 3 of them */
        unsigned char half[] = {0x81, 0x80 | 100, 1, 2, 3, 4, 'a', 'b', 'c'};
        send_all(w->fd, half, sizeof half, now_s() + 1);
        break;
    }
    case 3: /* half-close, then close */
        shutdown(w->fd, SHUT_WR);
        break;
    default: /* plain close */
        break;
    }
    ws_reset(w);
}

static void *session_main(void *arg)
{
    struct session *s = arg;
    struct view *v = &s->v;
    uint32_t rng = 777u + 31u * (uint32_t)s->index;
    int ids[MAX_TASKS];
    while (!atomic_load(&stop_clients)) {
        if (atomic_load(&quiesce)) {
            atomic_fetch_add(&sessions_idle, 1);
            while (atomic_load(&quiesce) && !atomic_load(&stop_clients))
                sleep_us(5000);
            atomic_fetch_sub(&sessions_idle, 1);
            continue;
        }
        char cid[48];
        snprintf(cid, sizeof cid, "session-%d-%lld", s->index, s->sessions);
        snprintf(v->ws.who, sizeof v->ws.who, "%s", cid);
        s->sessions++;
        int slow = chance(&rng, 25);
        if (view_open(v, cid, slow ? 16384 : 0) != 0) { /* small enough that the listener's writes back up */
            ws_reset(&v->ws);
            sleep_us(20000);
            continue;
        }
        atomic_fetch_add(&ws_sessions, 1);
        /* "*" or a few tasks, created ones and future ones alike. */
        int n = 0;
        int wildcard = chance(&rng, 35);
        if (!wildcard) {
            int want = 1 + (int)(rnd(&rng) % 6);
            for (int k = 0; k < want; k++) {
                int i = (int)(rnd(&rng) % (uint32_t)ntasks);
                int dup = 0;
                for (int j = 0; j < n; j++)
                    dup |= ids[j] == i;
                if (!dup)
                    ids[n++] = i;
            }
        }
        if (view_subscribe(v, wildcard ? NULL : ids, n) != 0) {
            ws_reset(&v->ws);
            continue;
        }
        double end = now_s() + 0.05 + (double)(rnd(&rng) % 800) / 1000.0;
        int asked = -1, unsubscribed = 0;
        long long asked_seq = 0;
        while (now_s() < end && !atomic_load(&stop_clients) && !atomic_load(&quiesce)) {
            char *m;
            struct task *t;
            int r;
            double slice = now_s() + 0.03;
            while ((r = ws_recv(&v->ws, slice, &m)) == 1) {
                int type = handle_message(v, m, &t);
                if (type == M_CURRENT && t && t - tasks == asked) {
                    if (json_int(m, "seq") < asked_seq)
                        fail(v->ws.who, "progress.current of %s: seq %lld below %lld seen before asking", t->id,
                             json_int(m, "seq"), asked_seq);
                    asked = -1;
                }
            }
            if (r < 0) {
                if (!atomic_load(&closing))
                    fail(v->ws.who, "connection closed by the server (code %d \"%s\") mid-session", v->ws.close_code,
                         v->ws.close_reason);
                break;
            }
            int action = (int)(rnd(&rng) % 100);
            char req[160];
            if (action < 15 && asked < 0) {
                int i = (int)(rnd(&rng) % (uint32_t)ntasks);
                if (atomic_load_explicit(&tasks[i].created, memory_order_acquire)) {
                    snprintf(req, sizeof req, "{\"type\":\"get_progress\",\"task_id\":\"%s\"}", tasks[i].id);
                    asked = i;
                    asked_seq = v->max_seq[i];
                    ws_send_text(&v->ws, req);
                }
            } else if (action < 22) {
                int b = (int)(rnd(&rng) % BATCHES);
                snprintf(req, sizeof req, "{\"type\":\"get_batch_progress\",\"batch_id\":\"fs-b%d\"}", b);
                ws_send_text(&v->ws, req);
            } else if (action < 30 && !unsubscribed) { /* leave the subscription, come back later */
                if (wildcard)
                    ws_send_text(&v->ws, "{\"type\":\"unsubscribe\",\"task_ids\":[\"*\"]}");
                else {
                    snprintf(req, sizeof req, "{\"type\":\"unsubscribe\",\"task_ids\":[\"%s\"]}", tasks[ids[0]].id);
                    ws_send_text(&v->ws, req);
                }
                unsubscribed = 1;
            } else if (action < 38 && unsubscribed) {
                /* Subscribe again; view_subscribe reads to its pong, so the "unsubscribed" comes first. */
                if (view_subscribe(v, wildcard ? NULL : ids, wildcard ? 0 : 1) != 0)
                    break;
                unsubscribed = 0;
            } else if (action < 42) { /* stop reading for a while */
                atomic_fetch_add(&ws_slow_pauses, 1);
                sleep_us(100000 + (long)(rnd(&rng) % 600000));
            } else if (action < 47) {
                view_ping(v);
            }
        }
        session_leave(s, &rng);
        sleep_us((long)(rnd(&rng) % 50000));
    }
    ws_free(&v->ws);
    return NULL;
}

/* ---- HTTP client (REST) ---------------------------------------------------------------------------------- */

struct http {
    int fd;
    char *buf;
    size_t len, cap;
};

/* GET path; *status and a NUL-terminated body (the caller frees). Keep-alive unless `fresh`; a reused
 * connection the server has closed is reopened once. 0 on success. */
static int http_get(struct http *h, const char *path, int fresh, int *status, char **body, char *why, size_t why_cap)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        int reused = h->fd >= 0 && !fresh;
        if (fresh && h->fd >= 0) {
            close(h->fd);
            h->fd = -1;
        }
        if (h->fd < 0) {
            h->fd = tcp_connect(port, 0);
            h->len = 0;
            if (h->fd < 0) {
                snprintf(why, why_cap, "connect: %s", strerror(errno));
                return -1;
            }
        }
        char req[600];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n", path, port,
                         fresh ? "Connection: close\r\n" : "");
        double deadline = now_s() + 15;
        char *end = NULL;
        int ok = send_all(h->fd, req, (size_t)n, deadline) == 0;
        while (ok && !(end = h->len ? memmem(h->buf, h->len, "\r\n\r\n", 4) : NULL)) {
            grow((void **)&h->buf, &h->cap, h->len + 16384);
            ssize_t got = recv_some(h->fd, h->buf + h->len, h->cap - h->len - 1, deadline);
            ok = got > 0;
            if (got == 0) {
                snprintf(why, why_cap, "GET %s: no response within 15 s", path);
                return -1;
            }
            if (got > 0)
                h->len += (size_t)got;
        }
        if (!ok) {
            close(h->fd);
            h->fd = -1;
            if (reused && h->len == 0)
                continue; /* the server closed the idle keep-alive connection */
            snprintf(why, why_cap, "GET %s: connection closed before the response", path);
            return -1;
        }
        size_t head_len = (size_t)(end - h->buf) + 4;
        char *head = strndup(h->buf, head_len);
        long long content_length = -1;
        int close_after = fresh;
        for (char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
            if (strncasecmp(line + 2, "content-length:", 15) == 0)
                content_length = atoll(line + 17);
            if (strncasecmp(line + 2, "connection: close", 17) == 0)
                close_after = 1;
        }
        *status = strncmp(head, "HTTP/1.1 ", 9) == 0 ? atoi(head + 9) : -1;
        free(head);
        if (content_length < 0) {
            snprintf(why, why_cap, "GET %s: no Content-Length", path);
            close(h->fd);
            h->fd = -1;
            return -1;
        }
        while (h->len < head_len + (size_t)content_length) {
            grow((void **)&h->buf, &h->cap, head_len + (size_t)content_length + 1);
            ssize_t got = recv_some(h->fd, h->buf + h->len, h->cap - h->len - 1, deadline);
            if (got <= 0) {
                snprintf(why, why_cap, "GET %s: body cut at %zu of %lld bytes", path, h->len - head_len, content_length);
                close(h->fd);
                h->fd = -1;
                return -1;
            }
            h->len += (size_t)got;
        }
        *body = strndup(h->buf + head_len, (size_t)content_length);
        memmove(h->buf, h->buf + head_len + content_length, h->len - head_len - (size_t)content_length);
        h->len -= head_len + (size_t)content_length;
        if (close_after) {
            close(h->fd);
            h->fd = -1;
        }
        atomic_fetch_add(&rest_requests, 1);
        return 0;
    }
    snprintf(why, why_cap, "GET %s: the connection failed twice", path);
    return -1;
}

static void *rest_main(void *arg)
{
    int index = (int)(intptr_t)arg;
    uint32_t rng = 4242u + (uint32_t)index;
    struct http h = {.fd = -1};
    long long *last_seq = calloc(MAX_TASKS, sizeof *last_seq);
    char who[32], why[200], path[256];
    snprintf(who, sizeof who, "rest-%d", index);
    while (!atomic_load(&stop_clients)) {
        int i = (int)(rnd(&rng) % (uint32_t)ntasks);
        int created = atomic_load_explicit(&tasks[i].created, memory_order_acquire);
        int what = (int)(rnd(&rng) % 10), want = 200;
        if (what <= 3)
            snprintf(path, sizeof path, "/api/v1/progress/tasks/%s", tasks[i].id);
        else if (what == 4)
            snprintf(path, sizeof path, "/api/v1/progress/tasks/%s/logs", tasks[i].id);
        else if (what == 5)
            snprintf(path, sizeof path, "/api/v1/progress/tasks/%s/history?after_seq=%u", tasks[i].id, rnd(&rng) % 50);
        else if (what == 6)
            snprintf(path, sizeof path, "/api/v1/progress/batch/fs-b%u", rnd(&rng) % BATCHES);
        else if (what == 7)
            snprintf(path, sizeof path, "/metrics");
        else if (what == 8)
            snprintf(path, sizeof path, "/healthz");
        else
            snprintf(path, sizeof path, "/api/v1/progress/tasks/fs-missing-%u", rnd(&rng) % 1000);
        if (what <= 5 && !created)
            want = -1; /* may or may not exist yet */
        if (what == 9)
            want = 404;
        int status = 0;
        char *body = NULL;
        if (http_get(&h, path, chance(&rng, 20), &status, &body, why, sizeof why) != 0) {
            if (!atomic_load(&closing))
                fail(who, "%s", why);
            sleep_us(10000);
            continue;
        }
        if ((want > 0 && status != want) || (want < 0 && status != 200 && status != 404))
            fail(who, "GET %s: HTTP %d, expected %d: %.200s", path, status, want, body);
        else if (status == 200 && what <= 3) {
            char id[64];
            json_str(body, "task_id", id, sizeof id);
            long long seq = json_int(body, "seq");
            if (strcmp(id, tasks[i].id) != 0 || seq < last_seq[i])
                fail(who, "GET %s: task_id \"%s\", seq %lld after %lld (must not go back)", path, id, seq, last_seq[i]);
            if (seq > last_seq[i])
                last_seq[i] = seq;
        } else if (status == 200 && what == 7 && !strstr(body, "progress_connections "))
            fail(who, "GET /metrics: no progress_connections gauge");
        else if (status == 200 && what == 6 && json_int(body, "total_tasks") < 0)
            fail(who, "GET %s: no total_tasks: %.200s", path, body);
        free(body);
        sleep_us(2000 + (long)(rnd(&rng) % 8000));
    }
    if (h.fd >= 0)
        close(h.fd);
    free(h.buf);
    free(last_seq);
    return NULL;
}

/* ---- Runners ---------------------------------------------------------------------------------------------- */

static int expect(const char *who, const char *what, progress_status got, progress_status want)
{
    atomic_fetch_add(&runner_calls, 1);
    if (got == want)
        return 0;
    fail(who, "%s = %s, expected %s: %s", what, progress_status_string(got), progress_status_string(want),
         got == PROGRESS_OK ? "" : progress_last_error());
    return -1;
}

static void run_task(struct task *t, uint32_t *rng)
{
    const char *id = t->id;
    static const char *const categories[] = {"image_generation", "video_generation", NULL};
    char options[160], msg[64], data[160];
    snprintf(options, sizeof options, "{\"batch_id\":\"%s\",\"quality\":\"q%d\",\"metadata\":{\"runner\":%d}}", t->batch,
             t->index % 2, t->runner);
    const char *template_id = t->template_kind == 2 ? "fs-tpl" : "fs-default";
    if (expect(id, "progress_task_create", progress_task_create(engine, id, template_id, categories[t->template_kind], options),
               PROGRESS_OK))
        return;
    atomic_store_explicit(&t->created, 1, memory_order_release);
    expect(id, "progress_task_create again", progress_task_create(engine, id, template_id, NULL, NULL), PROGRESS_E_EXISTS);
    if (t->stage_first)
        expect(id, "progress_stage_update(1, in_progress)",
               progress_stage_update(engine, id, 1, PROGRESS_STAGE_IN_PROGRESS, 0.5, "warming up"), PROGRESS_OK);
    long long step = 1;
    if (t->counter) { /* the first quarter of the steps through an attached counter */
        atomic_store_explicit((_Atomic long long *)&t->counter_mem[1], steps, memory_order_relaxed);
        atomic_store_explicit((_Atomic long long *)&t->counter_mem[0], 0, memory_order_relaxed);
        expect(id, "progress_task_attach_counter", progress_task_attach_counter(engine, id, t->counter_mem), PROGRESS_OK);
        for (; step <= steps / 4; step++) {
            atomic_store_explicit((_Atomic long long *)&t->counter_mem[0], step, memory_order_relaxed);
            sleep_us(pace_us);
        }
        expect(id, "progress_task_detach_counter", progress_task_detach_counter(engine, id), PROGRESS_OK);
    }
    unsigned char pixels[16 * 16 * 3];
    for (size_t k = 0; k < sizeof pixels; k++)
        pixels[k] = (unsigned char)(k * 7 + (size_t)t->index);
    for (; step <= t->last_step; step++) {
        snprintf(msg, sizeof msg, "s%lld", step);
        if (expect(id, "progress_update", progress_update(engine, id, step, steps, msg), PROGRESS_OK))
            return;
        if (step == 1 || (t->counter && step == steps / 4 + 1)) {
            char *json = NULL;
            if (expect(id, "progress_task_get", progress_task_get(engine, id, &json), PROGRESS_OK) == 0)
                t->main_stage = json_int(json, "current_stage");
            progress_string_free(json);
        }
        if (step % 10 == 0) {
            snprintf(msg, sizeof msg, "fs-log %s n%d", id, ++t->logs);
            expect(id, "progress_log", progress_log(engine, id, PROGRESS_LOG_INFO, msg), PROGRESS_OK);
        }
        if (step % 25 == 0) {
            snprintf(data, sizeof data, "{\"level\":\"debug\",\"message\":\"fs-log %s n%d\"}", id, ++t->logs);
            expect(id, "progress_event(log)", progress_event(engine, id, "log", data), PROGRESS_OK);
        }
        if (t->preview)
            expect(id, "progress_preview_pixels", progress_preview_pixels(engine, id, pixels, 16, 16, 48, 3), PROGRESS_OK);
        if (step == steps / 2 && t->index == 0) { /* refused calls, which invalid_updates must count */
            atomic_fetch_add(&invalid_calls, 1);
            expect(id, "progress_update(step > total)", progress_update(engine, id, steps + 1, steps, NULL), PROGRESS_E_RANGE);
            atomic_fetch_add(&invalid_calls, 1);
            expect(id, "progress_update(unknown task)", progress_update(engine, "fs-nobody", 1, 2, NULL), PROGRESS_E_NOT_FOUND);
        }
        if (pace_us)
            sleep_us(pace_us / 2 + (long)(rnd(rng) % (uint32_t)pace_us));
    }
    switch (t->end) {
    case END_COMPLETE:
        if (t->index % 2) { /* the stepped stage completed, the next one entered, then the task completed */
            expect(id, "progress_stage_update(completed)",
                   progress_stage_update(engine, id, (int)t->main_stage, PROGRESS_STAGE_COMPLETED, 1, NULL), PROGRESS_OK);
            expect(id, "progress_stage_update(next, in_progress)",
                   progress_stage_update(engine, id, (int)t->main_stage + 1, PROGRESS_STAGE_IN_PROGRESS, 0.5, "finishing"),
                   PROGRESS_OK);
        }
        expect(id, "progress_task_complete", progress_task_complete(engine, id), PROGRESS_OK);
        break;
    case END_FAIL:
        snprintf(t->error, sizeof t->error, "boom in %s", id);
        expect(id, "progress_task_fail", progress_task_fail(engine, id, t->error), PROGRESS_OK);
        break;
    case END_FAIL_EVENT:
        snprintf(t->error, sizeof t->error, "event boom in %s", id);
        snprintf(data, sizeof data, "{\"error\":\"%s\"}", t->error);
        expect(id, "progress_event(execution_error)", progress_event(engine, id, "execution_error", data), PROGRESS_OK);
        break;
    default:
        snprintf(t->error, sizeof t->error, "cancelled %s", id);
        expect(id, "progress_task_cancel", progress_task_cancel(engine, id, t->error), PROGRESS_OK);
        break;
    }
    char *json = NULL;
    if (expect(id, "progress_task_get (terminal)", progress_task_get(engine, id, &json), PROGRESS_OK) == 0) {
        char status[24];
        json_str(json, "status", status, sizeof status);
        t->terminal_seq = json_int(json, "seq");
        if (strcmp(status, end_status[t->end]) != 0)
            fail(id, "status \"%s\" right after the terminal call, expected \"%s\"", status, end_status[t->end]);
    }
    progress_string_free(json);
    atomic_fetch_add(&invalid_calls, 1);
    expect(id, "progress_update after the end", progress_update(engine, id, 1, steps, "late"), PROGRESS_E_STATE);
    snprintf(msg, sizeof msg, "fs-log %s n%d", id, ++t->logs);
    expect(id, "progress_log after the end", progress_log(engine, id, PROGRESS_LOG_WARNING, msg), PROGRESS_OK);
    atomic_store_explicit(&t->done, 1, memory_order_release);
}

static void *runner_main(void *arg)
{
    int r = (int)(intptr_t)arg;
    uint32_t rng = 99u + (uint32_t)r;
    for (int k = 0; k < tasks_per_runner; k++)
        run_task(&tasks[r * tasks_per_runner + k], &rng);
    return NULL;
}

/* ---- Tasks left executing at close ---------------------------------------------------------------------- */

/* progress_engine_close with work in flight: tasks executing (resource sampling every 100 ms changes them), a
 * step counter attached to each (close reads it a last time; that value must reach Redis), and a large preview
 * of each queued right before close, so the preview thread attaches previews (changes the tasks) while close
 * stops the listener. */
#define LEFTOVERS 8

struct leftover {
    char id[24];
    _Alignas(16) volatile long long counter[2];
    long long last_step;
};

static struct leftover leftovers[LEFTOVERS];

static void start_leftovers(void)
{
    for (int j = 0; j < LEFTOVERS; j++) {
        struct leftover *l = &leftovers[j];
        snprintf(l->id, sizeof l->id, "fs-left-%d", j);
        expect(l->id, "progress_task_create", progress_task_create(engine, l->id, "fs-left", "image_generation", NULL),
               PROGRESS_OK);
        expect(l->id, "progress_update", progress_update(engine, l->id, 1, steps, "left"), PROGRESS_OK);
        /* Past the 50 % milestone (overall = 20 % + 70 % x step / steps). */
        atomic_store_explicit((_Atomic long long *)&l->counter[1], steps, memory_order_relaxed);
        atomic_store_explicit((_Atomic long long *)&l->counter[0], steps / 2 + j, memory_order_relaxed);
        expect(l->id, "progress_task_attach_counter", progress_task_attach_counter(engine, l->id, l->counter), PROGRESS_OK);
    }
    /* The maintenance thread applies the counters and the listener sends the states (throttle 20 ms), so that the
     * preview attached during close is a new change for the listener. */
    sleep_us(200000);
    /* Large enough that the preview thread is still encoding while close stops the listener. */
    enum { W = 1024, H = 1024 };
    unsigned char *pixels = malloc((size_t)W * H * 3);
    for (size_t k = 0; k < (size_t)W * H * 3; k++)
        pixels[k] = (unsigned char)(k * 31 >> 3);
    for (int j = 0; j < LEFTOVERS; j++) {
        struct leftover *l = &leftovers[j];
        expect(l->id, "progress_preview_pixels", progress_preview_pixels(engine, l->id, pixels, W, H, W * 3, 3),
               PROGRESS_OK);
        /* The last value, which only close's last read of the counter applies. */
        l->last_step = steps / 2 + LEFTOVERS + j;
        atomic_store_explicit((_Atomic long long *)&l->counter[0], l->last_step, memory_order_relaxed);
    }
    free(pixels);
}

/* ---- Final checks ------------------------------------------------------------------------------------------ */

/* Checks a TaskProgress (from progress_task_get or REST) against what the runner did. */
static void check_final(struct task *t, const char *where, const char *json)
{
    char status[24], error[64], message[32], want_message[32];
    json_str(json, "status", status, sizeof status);
    json_str(json, "error", error, sizeof error);
    long long seq = json_int(json, "seq");
    const char *stage = json_stage(json, t->main_stage);
    json_str(stage, "message", message, sizeof message);
    snprintf(want_message, sizeof want_message, "s%lld", t->last_step);
    double progress = json_number(stage, "progress");
    double want_progress = t->end == END_COMPLETE ? 1.0 : (double)t->last_step / (double)steps;
    long long slack = t->preview ? 3 : 0; /* previews finishing after the end attach their URL (a new seq) */
    if (strcmp(status, end_status[t->end]) != 0)
        fail(t->id, "%s: status \"%s\", expected \"%s\"", where, status, end_status[t->end]);
    if (t->end != END_COMPLETE && strcmp(error, t->error) != 0)
        fail(t->id, "%s: error \"%s\", expected \"%s\"", where, error, t->error);
    if (seq < t->terminal_seq || seq > t->terminal_seq + slack)
        fail(t->id, "%s: seq %lld, expected %lld%s", where, seq, t->terminal_seq, slack ? " (+3 at most)" : "");
    if (t->final_seq && seq != t->final_seq)
        fail(t->id, "%s: seq %lld, progress_task_get said %lld", where, seq, t->final_seq);
    if (!stage || strcmp(message, want_message) != 0 || progress != want_progress)
        fail(t->id, "%s: stage %lld has progress %.17g and message \"%s\", expected %.17g and \"%s\"", where,
             t->main_stage, progress, message, want_progress, want_message);
    if (t->end == END_COMPLETE && json_number(json, "overall_progress") != 100)
        fail(t->id, "%s: overall_progress %g of a completed task", where, json_number(json, "overall_progress"));
}

/* The runner's log entries ("fs-log ID nK") in a logs JSON array or list of JSON entries: all, in order. */
static void check_log_messages(struct task *t, const char *where, const char **messages, int n, int exact_count)
{
    char prefix[48];
    int len = snprintf(prefix, sizeof prefix, "fs-log %s n", t->id), next = 1;
    for (int k = 0; k < n; k++) {
        if (strncmp(messages[k], prefix, (size_t)len) != 0)
            continue;
        int got = atoi(messages[k] + len);
        if (got == next)
            next++;
        else if (exact_count || got > next) {
            fail(t->id, "%s: log entry n%d where n%d was expected", where, got, next);
            return;
        }
    }
    if (next != t->logs + 1)
        fail(t->id, "%s: %d of the runner's %d log entries", where, next - 1, t->logs);
}

/* Log entries of a {"logs":[...]} document: each entry's "message". */
static void check_logs_json(struct task *t, const char *where, const char *json)
{
    const char *p = json_member(json, "logs");
    const char **messages = calloc(2048, sizeof *messages);
    char (*texts)[64] = calloc(2048, sizeof *texts);
    int n = 0;
    if (!p || *p != '[') {
        fail(t->id, "%s: no logs array", where);
        goto out;
    }
    p = skip_ws(p + 1);
    while (*p == '{' && n < 2048) {
        json_str(p, "message", texts[n], sizeof texts[n]);
        messages[n] = texts[n];
        n++;
        p = skip_value(p);
        if (!p)
            break;
        p = skip_ws(p);
        if (*p == ',')
            p = skip_ws(p + 1);
    }
    check_log_messages(t, where, messages, n, 1);
out:
    free(messages);
    free(texts);
}

static long long stat_of(const char *stats, const char *key)
{
    long long n = json_int(stats, key);
    if (n < 0)
        fail("progress_engine_stats", "no \"%s\" in %s", key, stats);
    return n;
}

static char *engine_stats(void)
{
    char *json = NULL;
    if (progress_engine_stats(engine, &json) != PROGRESS_OK)
        fail("progress_engine_stats", "%s", progress_last_error());
    return json;
}

static long long metric_of(const char *text, const char *name)
{
    char key[96];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(text, key);
    return p ? atoll(p + strlen(key)) : -1;
}

static void check_redis(int reconnects)
{
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    if (!c || c->err) {
        fail("redis", "cannot connect to 127.0.0.1:%d: %s", redis_port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return;
    }
    for (int i = 0; i < ntasks; i++) {
        struct task *t = &tasks[i];
        redisReply *r = redisCommand(c, "GET %s:task:{%s}:state", ns, t->id);
        if (!r || r->type != REDIS_REPLY_STRING) {
            fail(t->id, "redis: no state key");
        } else {
            char status[24];
            json_str(r->str, "status", status, sizeof status);
            long long seq = json_int(r->str, "seq");
            if (seq != t->final_seq || strcmp(status, end_status[t->end]) != 0)
                fail(t->id, "redis: state has seq %lld and status \"%s\", expected %lld and \"%s\"", seq, status,
                     t->final_seq, end_status[t->end]);
        }
        freeReplyObject(r);
        r = redisCommand(c, "XREVRANGE %s:task:{%s}:events + - COUNT 1", ns, t->id);
        long long last = -1;
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
            r->element[0]->elements >= 1)
            last = atoll(r->element[0]->element[0]->str);
        if (last != t->final_seq)
            fail(t->id, "redis: the last stream entry ends at seq %lld, expected %lld", last, t->final_seq);
        freeReplyObject(r);
        r = redisCommand(c, "LRANGE %s:task:{%s}:logs 0 -1", ns, t->id);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fail(t->id, "redis: no log list");
        } else {
            const char **messages = calloc(r->elements + 1, sizeof *messages);
            char (*texts)[64] = calloc(r->elements + 1, sizeof *texts);
            for (size_t k = 0; k < r->elements; k++) {
                json_str(r->element[k]->str, "message", texts[k], sizeof texts[k]);
                messages[k] = texts[k];
            }
            /* A write whose reply was lost is sent again, so after a reconnect an entry may appear twice. */
            check_log_messages(t, "redis log list", messages, (int)r->elements, reconnects == 0);
            free(messages);
            free(texts);
        }
        freeReplyObject(r);
        r = redisCommand(c, "SISMEMBER %s:batch:{%s} %s", ns, t->batch, t->id);
        if (!r || r->type != REDIS_REPLY_INTEGER || r->integer != 1)
            fail(t->id, "redis: not a member of %s:batch:{%s}", ns, t->batch);
        freeReplyObject(r);
        r = redisCommand(c, "ZSCORE %s:heartbeats %s", ns, t->id);
        if (!r || r->type != REDIS_REPLY_NIL)
            fail(t->id, "redis: still has a heartbeat (finished tasks are removed)");
        freeReplyObject(r);
    }
    for (int j = 0; j < LEFTOVERS; j++) {
        struct leftover *l = &leftovers[j];
        redisReply *r = redisCommand(c, "GET %s:task:{%s}:state", ns, l->id);
        if (!r || r->type != REDIS_REPLY_STRING) {
            fail(l->id, "redis: no state key");
        } else {
            char status[24];
            json_str(r->str, "status", status, sizeof status);
            long long stage = json_int(r->str, "current_stage");
            double progress = json_number(json_stage(r->str, stage), "progress");
            if (strcmp(status, "executing") != 0 || progress != (double)l->last_step / (double)steps)
                fail(l->id, "redis: status \"%s\", stage %lld progress %.17g; expected \"executing\" and %.17g (the "
                            "counter's last value, read by progress_engine_close)",
                     status, stage, progress, (double)l->last_step / (double)steps);
        }
        freeReplyObject(r);
    }
    redisReply *r = redisCommand(c, "HGET %s:templates fs-tpl", ns);
    if (!r || r->type != REDIS_REPLY_STRING)
        fail("redis", "no registered template fs-tpl in %s:templates", ns);
    freeReplyObject(r);
    redisFree(c);
}

/* ---- main ------------------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s REDIS_PORT [runners] [tasks per runner] [steps] [sessions] [pace us]\n", argv[0]);
        return 2;
    }
    redis_port = atoi(argv[1]);
    nrunners = argc > 2 ? atoi(argv[2]) : 4;
    tasks_per_runner = argc > 3 ? atoi(argv[3]) : 12;
    steps = argc > 4 ? atoll(argv[4]) : 128;
    sessions_n = argc > 5 ? atoi(argv[5]) : 6;
    pace_us = argc > 6 ? atol(argv[6]) : 1000;
    ntasks = nrunners * tasks_per_runner;
    if (redis_port <= 0 || nrunners < 1 || tasks_per_runner < 1 || ntasks > MAX_TASKS || steps < 8 ||
        (steps & (steps - 1)) || sessions_n < 0 || sessions_n > MAX_SESSIONS || pace_us < 0) {
        fprintf(stderr, "fleet_stress: bad arguments (tasks <= %d, steps a power of 2 >= 8, sessions <= %d)\n",
                MAX_TASKS, MAX_SESSIONS);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    double t0 = now_s();
    snprintf(ns, sizeof ns, "fleet-%ld-%ld", (long)getpid(), (long)time(NULL));

    char config[512];
    snprintf(config, sizeof config,
             "{\"listen\":\"127.0.0.1:0\",\"redis_url\":\"redis://127.0.0.1:%d/0\",\"namespace\":\"%s\","
             "\"throttle_ms\":20,\"resource_interval_ms\":100,\"retention_seconds\":3600}",
             redis_port, ns);
    progress_status st = progress_engine_open(config, &engine);
    if (st != PROGRESS_OK) {
        printf("FAIL progress_engine_open: %s: %s\n", progress_status_string(st), progress_last_error());
        return 1;
    }
    port = progress_engine_port(engine);
    if (port <= 0) {
        printf("FAIL progress_engine_port: %d\n", port);
        progress_engine_close(engine);
        return 1;
    }
    expect("fs-tpl", "progress_register_template_stages",
           progress_register_template_stages(engine, "fs-tpl",
                                             "[{\"name\":\"load\",\"weight\":1},{\"name\":\"sample\",\"weight\":8},"
                                             "{\"name\":\"decode\",\"weight\":1}]"),
           PROGRESS_OK);

    for (int r = 0; r < nrunners; r++)
        for (int k = 0; k < tasks_per_runner; k++) {
            struct task *t = &tasks[r * tasks_per_runner + k];
            snprintf(t->id, sizeof t->id, "fs-r%d-t%d", r, k);
            snprintf(t->batch, sizeof t->batch, "fs-b%d", (r + k) % BATCHES);
            t->runner = r;
            t->index = k;
            t->end = (r + k) % END_KINDS;
            t->preview = k % 3 == 0;
            t->counter = k % 4 == 1;
            t->stage_first = k % 5 == 2;
            t->template_kind = (r + 2 * k) % 3;
            t->last_step = t->end == END_COMPLETE ? steps : steps / 2 + (k * 7 + r) % (steps / 2);
            atomic_init(&t->min_terminal_seq_seen, LLONG_MAX);
        }

    /* Stayers first, subscribed before any task exists. */
    for (int s = 0; s < STAYERS; s++) {
        stayers[s].kind = s;
        stayers[s].v.ws.fd = -1;
        stayers[s].v.ws.rng = 55u + (uint32_t)s;
        snprintf(stayers[s].v.ws.who, sizeof stayers[s].v.ws.who, "stayer-%d%s", s,
                 s == 0 ? " (*)" : s == 1 ? " (*, slow)" : " (by id)");
        pthread_create(&stayers[s].thread, NULL, stayer_main, &stayers[s]);
    }
    for (int s = 0; s < STAYERS; s++)
        while (!atomic_load(&stayers[s].ready))
            sleep_us(2000);
    pthread_t rest[REST_THREADS], runners[MAX_TASKS];
    for (int i = 0; i < REST_THREADS; i++)
        pthread_create(&rest[i], NULL, rest_main, (void *)(intptr_t)i);
    for (int i = 0; i < sessions_n; i++) {
        sessions[i].index = i;
        sessions[i].v.ws.fd = -1;
        sessions[i].v.ws.rng = 1000u + (uint32_t)i;
        pthread_create(&sessions[i].thread, NULL, session_main, &sessions[i]);
    }
    double runners_start = now_s();
    for (int r = 0; r < nrunners; r++)
        pthread_create(&runners[r], NULL, runner_main, (void *)(intptr_t)r);
    for (int r = 0; r < nrunners; r++)
        pthread_join(runners[r], NULL);
    double runners_time = now_s() - runners_start;
    atomic_store(&runners_done, 1);

    /* Final state of every task, as progress_task_get has it. */
    for (int i = 0; i < ntasks; i++) {
        struct task *t = &tasks[i];
        if (!atomic_load_explicit(&t->done, memory_order_acquire)) {
            fail(t->id, "its runner did not finish it");
            continue;
        }
        char *json = NULL;
        if (expect(t->id, "progress_task_get (final)", progress_task_get(engine, t->id, &json), PROGRESS_OK) == 0) {
            check_final(t, "progress_task_get", json);
            t->final_seq = json_int(json, "seq");
        }
        progress_string_free(json);
        json = NULL;
        if (expect(t->id, "progress_task_logs", progress_task_logs(engine, t->id, 0, PROGRESS_LOG_DEBUG, &json),
                   PROGRESS_OK) == 0)
            check_logs_json(t, "progress_task_logs", json);
        progress_string_free(json);
    }
    /* A preview that finishes after its task's end attaches its URL: seq moves once more. Wait until no task
     * has moved for 1 s (bounded). */
    double settle_start = now_s(), stable_since = now_s();
    while (now_s() - stable_since < 1.0 && now_s() - settle_start < 15) {
        sleep_us(100000);
        for (int i = 0; i < ntasks; i++) {
            char *json = NULL;
            if (progress_task_get(engine, tasks[i].id, &json) == PROGRESS_OK && json_int(json, "seq") != tasks[i].final_seq) {
                tasks[i].final_seq = 0;
                check_final(&tasks[i], "progress_task_get (settled)", json);
                tasks[i].final_seq = json_int(json, "seq");
                stable_since = now_s();
            }
            progress_string_free(json);
        }
    }

    /* Every stayer ends with the final state of every task. */
    double wait_start = now_s(), caught_up[STAYERS];
    for (int s = 0; s < STAYERS; s++) {
        for (int i = 0; i < ntasks; i++) {
            struct task *t = &tasks[i];
            int want = status_code(end_status[t->end]);
            while ((atomic_load(&stayers[s].seq[i]) != t->final_seq || atomic_load(&stayers[s].status[i]) != want) &&
                   !atomic_load(&stayers[s].ended) && now_s() - wait_start < 20)
                sleep_us(10000);
            if (atomic_load(&stayers[s].seq[i]) != t->final_seq || atomic_load(&stayers[s].status[i]) != want)
                fail(stayers[s].v.ws.who, "%s: last saw seq %lld status %d, final is seq %lld status \"%s\"", t->id,
                     atomic_load(&stayers[s].seq[i]), atomic_load(&stayers[s].status[i]), t->final_seq,
                     end_status[t->end]);
        }
        caught_up[s] = now_s() - wait_start;
    }

    /* REST: every task's final state and logs; every batch, also against the C call. */
    struct http h = {.fd = -1};
    char path[256], why[200];
    int by_batch[BATCHES][6] = {{0}};
    for (int i = 0; i < ntasks; i++) {
        struct task *t = &tasks[i];
        by_batch[(t->runner + t->index) % BATCHES][status_code(end_status[t->end])]++;
        int status;
        char *body = NULL;
        snprintf(path, sizeof path, "/api/v1/progress/tasks/%.31s", t->id);
        if (http_get(&h, path, 0, &status, &body, why, sizeof why) != 0)
            fail(t->id, "REST: %s", why);
        else if (status != 200)
            fail(t->id, "REST: GET %s: HTTP %d", path, status);
        else
            check_final(t, "REST", body);
        free(body);
        body = NULL;
        snprintf(path, sizeof path, "/api/v1/progress/tasks/%.31s/logs", t->id);
        if (http_get(&h, path, 0, &status, &body, why, sizeof why) != 0 || status != 200)
            fail(t->id, "REST logs: %s", status != 200 ? "not HTTP 200" : why);
        else
            check_logs_json(t, "REST logs", body);
        free(body);
    }
    for (int b = 0; b < BATCHES; b++) {
        char batch[16], who[24];
        snprintf(batch, sizeof batch, "fs-b%d", b);
        snprintf(who, sizeof who, "batch %s", batch);
        int total = by_batch[b][ST_COMPLETED] + by_batch[b][ST_FAILED] + by_batch[b][ST_CANCELLED];
        for (int via = 0; via < 2; via++) {
            char *json = NULL;
            int status = 200;
            if (via == 0) {
                if (expect(who, "progress_batch_get", progress_batch_get(engine, batch, NULL, &json), PROGRESS_OK))
                    continue;
            } else {
                snprintf(path, sizeof path, "/api/v1/progress/batch/%s", batch);
                if (http_get(&h, path, 0, &status, &json, why, sizeof why) != 0 || status != 200) {
                    fail(who, "REST: %s", status != 200 ? "not HTTP 200" : why);
                    free(json);
                    continue;
                }
            }
            const char *counts = json_member(json, "counts");
            if (json_int(json, "total_tasks") != total || json_int(counts, "completed") != by_batch[b][ST_COMPLETED] ||
                json_int(counts, "failed") != by_batch[b][ST_FAILED] ||
                json_int(counts, "cancelled") != by_batch[b][ST_CANCELLED])
                fail(who, "%s: %.300s; expected %d tasks: %d completed, %d failed, %d cancelled", via ? "REST" : "C", json,
                     total, by_batch[b][ST_COMPLETED], by_batch[b][ST_FAILED], by_batch[b][ST_CANCELLED]);
            if (via == 0)
                progress_string_free(json);
            else
                free(json);
        }
    }

    /* Observations of every WebSocket client against the final states. */
    for (int i = 0; i < ntasks; i++) {
        struct task *t = &tasks[i];
        int want_bit = 1 << status_code(end_status[t->end]);
        if (atomic_load(&t->max_seq_seen) > t->final_seq)
            fail(t->id, "a client saw seq %lld, beyond the final %lld", atomic_load(&t->max_seq_seen), t->final_seq);
        if (atomic_load(&t->max_live_seq_seen) >= t->terminal_seq)
            fail(t->id, "a client saw a non-terminal status at seq %lld, the terminal seq is %lld",
                 atomic_load(&t->max_live_seq_seen), t->terminal_seq);
        if (atomic_load(&t->min_terminal_seq_seen) < t->terminal_seq)
            fail(t->id, "a client saw a terminal status at seq %lld, before the terminal seq %lld",
                 atomic_load(&t->min_terminal_seq_seen), t->terminal_seq);
        if (atomic_load(&t->terminal_statuses_seen) & ~want_bit)
            fail(t->id, "a client saw another terminal status than \"%s\" (mask 0x%x)", end_status[t->end],
                 atomic_load(&t->terminal_statuses_seen));
    }

    /* Sessions leave; then exactly the stayers' connections and subscriptions remain (none left behind by the
     * abrupt disconnects). */
    atomic_store(&quiesce, 1);
    long long connections = -1, subscriptions = -1;
    for (double until = now_s() + 15; now_s() < until;) {
        int status;
        char *body = NULL;
        if (atomic_load(&sessions_idle) == sessions_n &&
            http_get(&h, "/metrics", 0, &status, &body, why, sizeof why) == 0 && status == 200) {
            connections = metric_of(body, "progress_connections");
            subscriptions = metric_of(body, "progress_subscriptions");
        }
        free(body);
        if (connections == STAYERS && subscriptions == ntasks)
            break;
        sleep_us(50000);
    }
    if (connections != STAYERS || subscriptions != ntasks)
        fail("/metrics", "%lld connections and %lld subscriptions once the sessions left, expected %d and %d",
             connections, subscriptions, STAYERS, ntasks);
    atomic_store(&quiesce, 0);

    /* Redis has everything (bounded wait), then the counters. */
    char *stats = NULL;
    for (double until = now_s() + 15; now_s() < until; sleep_us(50000)) {
        progress_string_free(stats);
        stats = engine_stats();
        if (stats && json_int(stats, "redis_connected") == 1 && json_int(stats, "redis_queue_depth") == 0)
            break;
    }
    long long reconnects = 0;
    if (stats) {
        if (stat_of(stats, "redis_connected") != 1 || stat_of(stats, "redis_queue_depth") != 0)
            fail("progress_engine_stats", "Redis writes not flushed within 15 s: %s", stats);
        if (stat_of(stats, "invalid_updates") != atomic_load(&invalid_calls))
            fail("progress_engine_stats", "invalid_updates %lld, expected %d (the refused calls made)",
                 stat_of(stats, "invalid_updates"), atomic_load(&invalid_calls));
        if (stat_of(stats, "tasks") != ntasks)
            fail("progress_engine_stats", "tasks %lld, expected %d", stat_of(stats, "tasks"), ntasks);
        if (stat_of(stats, "redis_command_errors") != 0 || stat_of(stats, "redis_dropped_writes") != 0 ||
            stat_of(stats, "redis_dropped_logs") != 0)
            fail("progress_engine_stats", "Redis command errors or dropped writes/logs: %s", stats);
        reconnects = stat_of(stats, "redis_reconnects");
    }

    /* Let the sessions connect again, then close with every client connected and work in flight. */
    start_leftovers();
    for (double until = now_s() + 5; now_s() < until && atomic_load(&sessions_idle) > 0;)
        sleep_us(10000);
    sleep_us(300000);
    if (h.fd >= 0)
        close(h.fd);
    free(h.buf);
    atomic_store(&closing, 1);
    close_started = now_s();
    progress_engine_close(engine);
    double close_time = now_s() - close_started;
    engine = NULL;
    for (int s = 0; s < STAYERS; s++) {
        while (!atomic_load(&stayers[s].ended) && now_s() - close_started < 10)
            sleep_us(10000);
        if (!atomic_load(&stayers[s].ended))
            fail(stayers[s].v.ws.who, "still connected 10 s after progress_engine_close began");
    }
    atomic_store(&stop_clients, 1);
    for (int s = 0; s < STAYERS; s++)
        pthread_join(stayers[s].thread, NULL);
    for (int i = 0; i < sessions_n; i++)
        pthread_join(sessions[i].thread, NULL);
    for (int i = 0; i < REST_THREADS; i++)
        pthread_join(rest[i], NULL);
    int fd = tcp_connect(port, 0);
    if (fd >= 0) {
        fail("listener", "port %d still accepts connections after progress_engine_close", port);
        close(fd);
    }
    check_redis((int)reconnects);

    long long updates = stats ? json_int(stats, "updates") : -1, writes = stats ? json_int(stats, "redis_task_writes") : -1;
    printf("%s fleet_stress: %d runners x %d tasks x %lld steps in %.1f s (%ld runner calls, %lld updates); "
           "%ld WebSocket sessions + %d stayers, %ld messages (%ld progress.update), %ld slow-reader pauses, "
           "slowest subscribe %ld ms; "
           "%ld REST requests; %lld Redis task writes, %lld reconnects; stayers caught up in %.2f / %.2f / %.2f s; "
           "close %.2f s; "
           "total %.1f s\n",
           atomic_load(&failures) ? "FAIL" : "ok  ", nrunners, tasks_per_runner, steps, runners_time,
           atomic_load(&runner_calls), updates, atomic_load(&ws_sessions), STAYERS, atomic_load(&ws_messages),
           atomic_load(&ws_updates), atomic_load(&ws_slow_pauses), atomic_load(&subscribe_ms_max),
           atomic_load(&rest_requests), writes, reconnects,
           caught_up[0], caught_up[1], caught_up[2], close_time, now_s() - t0);
    progress_string_free(stats);
    for (int s = 0; s < STAYERS; s++)
        ws_free(&stayers[s].v.ws);
    if (atomic_load(&failures)) {
        printf("fleet_stress: FAILED (%d failed checks)\n", atomic_load(&failures));
        return 1;
    }
    printf("fleet_stress: all checks passed\n");
    return 0;
}
