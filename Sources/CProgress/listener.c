/*
 * libwebsockets glue for the Swift listener (see include/CProgressListener.h for the contract).
 * One protocol serves both plain HTTP and WebSocket upgrades on one port; every callback runs on the
 * service thread.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr */
#endif
#include "CProgress.h"
#include "CProgressListener.h"

#include <libwebsockets.h>
#include <dlfcn.h>
#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <net/if.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>
#include <stdlib.h>
#include <string.h>

/* libwebsockets loads its libuv support as a plugin from its own install directory only, and that plugin
 * links the system's libwebsockets.so. A bundled copy (a wheel's, renamed by auditwheel to
 * libwebsockets-<hash>.so) would load the system's plugin and with it a second libwebsockets, so a bundled
 * copy uses its built-in poll() loop (docs/PACKAGING.md). */
static int lws_is_system_copy(void) {
    Dl_info info;
    if (!dladdr((void *)lws_create_context, &info) || info.dli_fname == NULL)
        return 0;
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    return strncmp(base, "libwebsockets.so", strlen("libwebsockets.so")) == 0;
}

struct CProgress_listener {
    /* Set to NULL by libwebsockets once the context is wholly destroyed (info.pcontext). */
    struct lws_context *context;
    /* The event loop: libuv (epoll), owned by this listener and run only by the service thread, so
     * libwebsockets leaves the process's signals alone (it installs SIGINT/SIGTERM/... watchers only in a
     * loop of its own). has_loop is 0 when libwebsockets' libuv support is missing: then its poll() loop. */
    uv_loop_t loop;
    int has_loop;
    /* Out of file descriptors: the listening socket's watcher is stopped for ACCEPT_PAUSE_MS, then
     * restarted with libwebsockets' own callback (see pause_accepting). */
    uv_timer_t accept_timer;
    int accept_timer_open;
    uv_poll_t *listen_watcher;
    uv_poll_cb listen_cb;
    unsigned long accept_pauses;
    time_t accept_warned_at;
    CProgress_listener_callbacks cb;
    size_t max_message;
    size_t max_body;
    lws_sorted_usec_list_t timer;
    struct lws_protocols protocols[2];
};

/* An HTTP request whose body is being read: what on_http is given, kept from LWS_CALLBACK_HTTP (where
 * libwebsockets hands over the path) until LWS_CALLBACK_HTTP_BODY_COMPLETION. */
struct pending_request {
    char method[8];
    char *path;
    char *query; /* query_len bytes of NUL-separated "name=value" pairs */
    size_t query_len;
    char *auth;
    char *origin;
    char peer[64];
    unsigned char *body;
    size_t body_len, content_length;
};

/* Per-connection state, allocated and zeroed by libwebsockets. */
struct session {
    uint64_t id; /* WebSocket connection id from Swift; 0 for plain HTTP */
    /* WebSocket message being reassembled from fragments. */
    unsigned char *rx;
    size_t rx_len, rx_cap;
    int rx_binary;
    /* HTTP request whose body is still arriving (NULL when none). */
    struct pending_request *request;
    /* HTTP response body being sent. */
    unsigned char *body;
    size_t body_len, body_sent;
    int close_after;
    /* Close requested by Swift. */
    int close_code;
    char close_reason[96];
};

static void close_loop(CProgress_listener *l);
static void pause_accepting(CProgress_listener *l);

enum { ACCEPT_PAUSE_MS = 250 };

/* Set by log_line() on the thread whose accept() just failed with EMFILE/ENFILE: that is the service thread
 * of the listener in question (each runs its own loop), so CProgress_listener_service reads it there. */
static __thread int accept_out_of_fds;

/* One line of the engine's log (CProgress_log_event), which never blocks the service thread. */
static void log_stderr(const char *level, const char *event, const char *fmt, ...) {
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    CProgress_log_event(level, event, message);
}


/* libwebsockets' error lines. When accept() fails for want of descriptors, libwebsockets 4.1 logs the
 * error and returns, and since the connection is still waiting the listening socket is readable again at
 * once: a busy loop and one log line per try (hundreds of thousands a second). Those lines are not
 * printed; the listener pauses accepting instead and says so itself (pause_accepting). */
static void log_line(int level, const char *line) {
    (void)level;
    const char *e = strstr(line, "accept: errno ");
    if (e) {
        int err = atoi(e + strlen("accept: errno "));
        if (err == EMFILE || err == ENFILE) {
            accept_out_of_fds = 1;
            return;
        }
    }
    /* libwebsockets ends its lines with a newline: the log's line is one. */
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
    log_stderr("error", "libwebsockets", "%.*s", (int)len, line);
}
static void write_close_frame(struct lws *wsi, int code, const char *reason);
static void write_text_frame(struct lws *wsi, const char *format, size_t value);

enum { QUERY_CAP = 8192, HEADER_CAP = 4096, PATH_CAP = 4096, PEER_CAP = 64, HTTP_CHUNK = 32768 };

static void free_request(struct pending_request *r) {
    if (r == NULL) return;
    free(r->path);
    free(r->query);
    free(r->auth);
    free(r->origin);
    free(r->body);
    free(r);
}

static void free_session(struct session *s) {
    free_request(s->request);
    s->request = NULL;
    free(s->rx);
    s->rx = NULL;
    s->rx_len = s->rx_cap = 0;
    free(s->body);
    s->body = NULL;
    s->body_len = s->body_sent = 0;
}

/* Query arguments as NUL-separated "name=value" fragments, decoded by libwebsockets. */
static size_t collect_query(struct lws *wsi, char *buf, size_t cap) {
    size_t used = 0;
    for (int n = 0; used + 1 < cap; n++) {
        int len = lws_hdr_copy_fragment(wsi, buf + used, (int)(cap - used), WSI_TOKEN_HTTP_URI_ARGS, n);
        if (len < 0) break;
        used += (size_t)len + 1;
    }
    return used;
}

static void copy_header(struct lws *wsi, enum lws_token_indexes token, char *buf, int cap) {
    buf[0] = '\0';
    if (lws_hdr_total_length(wsi, token) > 0 && lws_hdr_copy(wsi, buf, cap, token) < 0) buf[0] = '\0';
}

static const char *method_of(struct lws *wsi) {
    static const struct {
        enum lws_token_indexes token;
        const char *name;
    } methods[] = {
        {WSI_TOKEN_GET_URI, "GET"},       {WSI_TOKEN_POST_URI, "POST"},     {WSI_TOKEN_PUT_URI, "PUT"},
        {WSI_TOKEN_PATCH_URI, "PATCH"},   {WSI_TOKEN_DELETE_URI, "DELETE"}, {WSI_TOKEN_OPTIONS_URI, "OPTIONS"},
        {WSI_TOKEN_HEAD_URI, "HEAD"},
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (lws_hdr_total_length(wsi, methods[i].token) > 0) return methods[i].name;
    }
    return "UNKNOWN";
}

/* The Content-Length the request declared; 0 when it has none (or one that is not a number). */
static size_t content_length(struct lws *wsi) {
    char text[32];
    copy_header(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, text, sizeof text);
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || errno) return 0;
    return n > SIZE_MAX ? SIZE_MAX : (size_t)n;
}

static char *copy_bytes(const char *bytes, size_t len) {
    char *copy = malloc(len + 1);
    if (copy == NULL) return NULL;
    memcpy(copy, bytes, len);
    copy[len] = '\0';
    return copy;
}

/* Keeps a request until its body (content_length bytes, at most max_body) is read; NULL when out of memory. The
 * body's buffer grows with what arrives, so a client that declares a body and sends none holds little (until the
 * timeout, timeout_secs, drops it). */
static struct pending_request *keep_request(const char *method, const char *path, const char *query, size_t query_len,
                                            const char *auth, const char *origin, const char *peer,
                                            size_t length) {
    struct pending_request *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->peer, sizeof r->peer, "%s", peer);
    r->path = copy_bytes(path, strlen(path));
    r->query = copy_bytes(query, query_len);
    r->query_len = query_len;
    r->auth = copy_bytes(auth, strlen(auth));
    r->origin = copy_bytes(origin, strlen(origin));
    r->content_length = length;
    if (r->path == NULL || r->query == NULL || r->auth == NULL || r->origin == NULL) {
        free_request(r);
        return NULL;
    }
    return r;
}

static int write_http_body(struct lws *wsi, struct session *s) {
    size_t left = s->body_len - s->body_sent;
    size_t n = left > HTTP_CHUNK ? HTTP_CHUNK : left;
    int final = n == left;
    unsigned char *buf = malloc(LWS_PRE + n + 1);
    if (buf == NULL) return -1;
    memcpy(buf + LWS_PRE, s->body + s->body_sent, n);
    int written = lws_write(wsi, buf + LWS_PRE, n, final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP);
    free(buf);
    if (written < (int)n) return -1;
    s->body_sent += n;
    if (!final) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    int close_after = s->close_after;
    free(s->body);
    s->body = NULL;
    s->body_len = s->body_sent = 0;
    if (close_after) return -1;
    /* Keep-alive: wait for the next request on this connection (non-zero means close it). */
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    struct session *s = user;
    struct lws_context *context = lws_get_context(wsi);
    CProgress_listener *l = context ? lws_context_user(context) : NULL;
    if (l == NULL) return lws_callback_http_dummy(wsi, reason, user, in, len);

    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        l->cb.on_wake(l->cb.ctx);
        return 0;

    case LWS_CALLBACK_HTTP: {
        char query[QUERY_CAP], auth[HEADER_CAP], origin[HEADER_CAP], peer[PEER_CAP];
        size_t query_len = collect_query(wsi, query, sizeof query);
        copy_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, auth, sizeof auth);
        copy_header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof origin);
        lws_get_peer_simple(wsi, peer, sizeof peer);
        free_session(s);
        const char *method = method_of(wsi), *path = in ? (const char *)in : "/";
        size_t length = content_length(wsi);
        /* A chunked body (Transfer-Encoding) is not read: its length is unknown. SIZE_MAX says so to Swift, which
         * answers 411 and closes the connection (the body's bytes would otherwise be read as the next request). */
        if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) length = SIZE_MAX;
        if (length > 0 && length <= l->max_body && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
            /* Answered once the body is in (LWS_CALLBACK_HTTP_BODY_COMPLETION). */
            s->request = keep_request(method, path, query, query_len, auth, origin, peer, length);
            return s->request ? 0 : -1;
        }
        /* No body, or one no route reads (a GET's) or too large to read: answered now, without it. */
        l->cb.on_http(l->cb.ctx, wsi, method, path, query, query_len, auth, origin, peer, NULL, length);
        if (s->body == NULL) return -1; /* Swift did not respond: a bug; drop the connection */
        lws_callback_on_writable(wsi);
        return 0;
    }

    case LWS_CALLBACK_HTTP_BODY:
        /* Kept for a request answered at the body's end; skipped for one answered already. */
        if (s && s->request) {
            struct pending_request *r = s->request;
            size_t n = len < r->content_length - r->body_len ? len : r->content_length - r->body_len;
            if (n == 0) return 0;
            unsigned char *grown = realloc(r->body, r->body_len + n);
            if (grown == NULL) return -1;
            r->body = grown;
            memcpy(r->body + r->body_len, in, n);
            r->body_len += n;
        }
        return 0;

    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (s && s->request) {
            struct pending_request *r = s->request;
            s->request = NULL;
            l->cb.on_http(l->cb.ctx, wsi, r->method, r->path, r->query, r->query_len, r->auth, r->origin, r->peer,
                          (const char *)r->body, r->body_len);
            free_request(r);
            if (s->body == NULL) return -1;
        }
        /* The body is read: now the response can go (the default handler would end the transaction before it is
         * written). */
        if (s && s->body) lws_callback_on_writable(wsi);
        return 0;

    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        /* RFC 6455 §4.2.1: version 13 and a key that is 16 bytes in base64; libwebsockets checks neither. */
        char version[8], key[64], decoded[64];
        copy_header(wsi, WSI_TOKEN_VERSION, version, sizeof version);
        copy_header(wsi, WSI_TOKEN_KEY, key, sizeof key);
        if (strcmp(version, "13") != 0 || strlen(key) != 24 || lws_b64_decode_string(key, decoded, sizeof decoded) != 16)
            return -1;
        return 0;
    }

    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (s == NULL || s->body == NULL) return 0;
        return write_http_body(wsi, s);

    case LWS_CALLBACK_CLOSED_HTTP:
        if (s) free_session(s);
        return 0;

    case LWS_CALLBACK_ESTABLISHED: {
        char path[PATH_CAP], query[QUERY_CAP], auth[HEADER_CAP], origin[HEADER_CAP], peer[PEER_CAP];
        copy_header(wsi, WSI_TOKEN_GET_URI, path, sizeof path);
        size_t query_len = collect_query(wsi, query, sizeof query);
        copy_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, auth, sizeof auth);
        copy_header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof origin);
        lws_get_peer_simple(wsi, peer, sizeof peer);
        s->id = l->cb.on_ws_open(l->cb.ctx, wsi, path, query, query_len, auth, origin, peer);
        return s->id ? 0 : -1;
    }

    case LWS_CALLBACK_RECEIVE: {
        if (s->id == 0) return -1;
        if (s->rx_len == 0) s->rx_binary = lws_frame_is_binary(wsi);
        if (s->rx_len + len > l->max_message) {
            /* SPEC §7: an oversized frame gets an `error` message, then close 1009. */
            write_text_frame(wsi, "{\"type\":\"error\",\"code\":\"message_too_large\",\"message\":\"over "
                             "max_message_bytes (%zu); closing (1009)\"}",
                             l->max_message);
            static const char why[] = "message too large";
            lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)why, sizeof why - 1);
            return -1;
        }
        if (s->rx_len + len > s->rx_cap) {
            size_t cap = s->rx_cap ? s->rx_cap : 1024;
            while (cap < s->rx_len + len) cap *= 2;
            unsigned char *grown = realloc(s->rx, cap);
            if (grown == NULL) return -1;
            s->rx = grown;
            s->rx_cap = cap;
        }
        memcpy(s->rx + s->rx_len, in, len);
        s->rx_len += len;
        if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0) {
            size_t n = s->rx_len;
            s->rx_len = 0;
            l->cb.on_ws_message(l->cb.ctx, s->id, (const char *)s->rx, n, s->rx_binary);
            /* Big buffers are not kept for the connection's lifetime. */
            if (s->rx_cap > 65536) {
                free(s->rx);
                s->rx = NULL;
                s->rx_cap = 0;
            }
        }
        return 0;
    }

    case LWS_CALLBACK_SERVER_WRITEABLE: {
        if (s->id == 0) return 0;
        int more = l->cb.on_ws_writable(l->cb.ctx, s->id, wsi);
        if (more < 0) {
            if (s->close_code) write_close_frame(wsi, s->close_code, s->close_reason);
            return -1;
        }
        if (more > 0) lws_callback_on_writable(wsi);
        return 0;
    }

    case LWS_CALLBACK_CLOSED:
        if (s && s->id) {
            uint64_t id = s->id;
            s->id = 0;
            l->cb.on_ws_close(l->cb.ctx, id);
        }
        if (s) free_session(s);
        return 0;

    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/* Writes a close frame (RFC 6455 §5.5.1) as raw bytes; the connection is then closed by returning -1 from
 * the writable callback. Not lws_close_reason(): with the libuv loop, libwebsockets 4.1 asks for one more
 * writable pass to send its close frame from inside that callback's close, and that pass never comes (the
 * client would see the TCP connection end with no close code). libwebsockets still sends what the socket did
 * not take at once before it closes (LRS_FLUSHING_BEFORE_CLOSE, bounded by its own 5 s timeout). */
/* Writes a final, unmasked frame of at most 125 bytes of payload (the 7-bit length form) as raw bytes. */
static void write_small_frame(struct lws *wsi, unsigned char opcode, const void *payload, size_t len) {
    unsigned char buf[LWS_PRE + 2 + 125];
    unsigned char *frame = buf + LWS_PRE;
    if (len > 125) len = 125;
    frame[0] = (unsigned char)(0x80 | opcode);
    frame[1] = (unsigned char)len;
    memcpy(frame + 2, payload, len);
    lws_write(wsi, frame, 2 + len, LWS_WRITE_RAW);
}

static void write_close_frame(struct lws *wsi, int code, const char *reason) {
    unsigned char payload[125];
    size_t reason_len = strlen(reason);
    if (reason_len > 123) reason_len = 123; /* control frame payloads are at most 125 bytes */
    payload[0] = (unsigned char)((code >> 8) & 0xff);
    payload[1] = (unsigned char)(code & 0xff);
    memcpy(payload + 2, reason, reason_len);
    write_small_frame(wsi, 0x8, payload, 2 + reason_len);
}

/* Writes a short text frame (at most 125 bytes of payload: `format` with one size_t) as raw bytes, as
 * write_close_frame does, for the error sent just before a close. */
static void write_text_frame(struct lws *wsi, const char *format, size_t value) {
    char payload[126];
    int n = snprintf(payload, sizeof payload, format, value);
    if (n < 0 || n > 125) return;
    write_small_frame(wsi, 0x1, payload, (size_t)n);
}

static void timer_fired(lws_sorted_usec_list_t *sul) {
    CProgress_listener *l = lws_container_of(sul, CProgress_listener, timer);
    l->cb.on_timer(l->cb.ctx);
}

/* 0 when iface:port can be bound as libwebsockets binds it (SO_REUSEADDR; every address: IPv6 and IPv4 in one
 * socket where the host has IPv6, as libwebsockets' default build does), else the errno of bind(). Checked before
 * the context exists: for a port another socket holds, libwebsockets 4.1 still makes the context, without its
 * vhost, and tearing that context down (on its libuv loop) crashes. iface is numeric here. */
/* bind() of a throw-away socket of `addr`'s family: 0 or its errno; -1 when no such socket can be made. */
static int probe_bind(const struct sockaddr *addr, socklen_t len) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1, zero = 0, error = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, addr, len) != 0) error = errno;
    close(fd);
    return error;
}

static int bind_error(const char *iface, int port) {
    if (iface == NULL) {
        struct sockaddr_in6 any6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = in6addr_any};
        int error = probe_bind((struct sockaddr *)&any6, sizeof any6);
        if (error >= 0) return error;  /* else no IPv6 here: IPv4 alone */
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (iface && inet_pton(AF_INET, iface, &addr.sin_addr) != 1) return 0;  /* an interface's name */
    int error = probe_bind((struct sockaddr *)&addr, sizeof addr);
    return error > 0 ? error : 0;
}

static void cannot_listen(const CProgress_listener_config *config, const char *why, char *err, size_t err_len) {
    snprintf(err, err_len, "cannot listen on %s:%d%s", config->iface ? config->iface : "*", config->port, why);
}

/* The listen host as libwebsockets takes it: an IPv4 address or an interface's name ("eth0"). A host name is
 * resolved to its IPv4 address here (libwebsockets would take it for an interface it cannot find, and make a
 * context that listens nowhere). Returns 0, or -1 with err filled when the name is neither. */
static int numeric_host(const CProgress_listener_config *config, char *out, size_t out_len, char *err,
                        size_t err_len) {
    const char *iface = config->iface;
    struct in_addr a;
    if (iface == NULL || inet_pton(AF_INET, iface, &a) == 1 || if_nametoindex(iface) != 0) {
        if (iface) snprintf(out, out_len, "%s", iface);
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *found = NULL;
    int rc = getaddrinfo(iface, NULL, &hints, &found);
    if (rc != 0 || found == NULL) {
        char why[160];
        snprintf(why, sizeof why, ": the host is no IPv4 address, interface or name this host resolves (%s)",
                 rc != 0 ? gai_strerror(rc) : "no IPv4 address");
        cannot_listen(config, why, err, err_len);
        return -1;
    }
    inet_ntop(AF_INET, &((struct sockaddr_in *)found->ai_addr)->sin_addr, out, (socklen_t)out_len);
    freeaddrinfo(found);
    return 0;
}

int CProgress_listener_create(const CProgress_listener_config *config, CProgress_listener **out, int *bound_port,
                              char *err, size_t err_len) {
    *out = NULL;
    char host[256];
    if (numeric_host(config, host, sizeof host, err, err_len) != 0) return -1;
    const char *iface = config->iface ? host : NULL;
    int busy = config->port > 0 ? bind_error(iface, config->port) : 0;
    if (busy) {
        char why[160];
        snprintf(why, sizeof why, ": %s%s", strerror(busy), busy == EADDRINUSE ? " (another socket holds it)" : "");
        cannot_listen(config, why, err, err_len);
        return -1;
    }
    CProgress_listener *l = calloc(1, sizeof *l);
    if (l == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    l->cb = config->callbacks;
    l->max_message = config->max_message_bytes;
    l->max_body = config->max_body_bytes;
    l->protocols[0].name = "http";
    l->protocols[0].callback = callback;
    l->protocols[0].per_session_data_size = sizeof(struct session);
    /* libwebsockets gives every WebSocket connection its own receive buffer of this size; clients send
     * small JSON messages, and larger ones arrive in pieces that `callback` reassembles, so a small buffer
     * keeps an idle connection cheap. */
    l->protocols[0].rx_buffer_size = 4096;
    /* One send() may carry a whole batch of frames (the Swift side writes up to 256 KiB at a time); without
     * this libwebsockets would cut every write at rx_buffer_size and send the rest on later loop passes. */
    l->protocols[0].tx_packet_size = 256 * 1024 + 4096;

    /* Only errors from libwebsockets itself; the engine logs what matters to its users. */
    lws_set_log_level(LLL_ERR, log_line);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = config->port;
    info.iface = iface;
    info.protocols = l->protocols;
    info.user = l;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
    /* 0: libwebsockets sizes its fd table from the process's RLIMIT_NOFILE and indexes it by fd. A smaller
     * explicit limit makes it find each ready connection by scanning the whole table (measured: 16-20 % of
     * the listener thread at 10,000 clients). max_connections is enforced by the listener itself. */
    info.fd_limit_per_thread = 0;
    info.timeout_secs = (unsigned int)config->header_timeout_secs;
    info.timeout_secs_ah_idle = (unsigned int)config->header_timeout_secs;
    info.keepalive_timeout = 30;
    info.max_http_header_data = 8192;
    info.max_http_header_pool = 256;
    /* permessage-deflate (ws_deflate): libwebsockets negotiates it and inflates what clients send; the
     * listener compresses its own frames (deflate.c). */
    static const struct lws_extension extensions[] = {
        {"permessage-deflate", lws_extension_callback_pm_deflate, "permessage-deflate; client_max_window_bits"},
        {NULL, NULL, NULL},
    };
    if (config->deflate) info.extensions = extensions;

    /* Events from libuv (epoll: the cost of a loop pass follows the ready connections, not all of them),
     * in a loop this listener owns. Without the evlib_uv plugin, libwebsockets' own poll() loop. */
    void *foreign_loops[1] = {&l->loop};
    int system_lws = lws_is_system_copy();
    /* Creating a context sets SIGPIPE to ignored for the whole process; the host's own setting is put back
     * after. Nothing here needs it: libwebsockets sends with MSG_NOSIGNAL, and the engine's threads, this
     * listener's among them, block SIGPIPE (Engine/Thread.swift). One engine opening at a time, so that a second
     * does not save the first's libwebsockets setting as the host's. */
    static pthread_mutex_t sigpipe_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&sigpipe_lock);
    struct sigaction host_sigpipe;
    int have_host_sigpipe = sigaction(SIGPIPE, NULL, &host_sigpipe) == 0;
    if (system_lws && uv_loop_init(&l->loop) == 0) {
        l->has_loop = 1;
        info.options |= LWS_SERVER_OPTION_LIBUV;
        info.foreign_loops = foreign_loops;
        info.pcontext = &l->context;
        l->context = lws_create_context(&info);
        if (l->context == NULL) {
            close_loop(l);
            info.options &= ~(uint64_t)LWS_SERVER_OPTION_LIBUV;
            info.foreign_loops = NULL;
            info.pcontext = NULL;
        }
    }
    if (l->context == NULL) {
        l->context = lws_create_context(&info);
        if (l->context && system_lws)
            log_stderr("warning", "libuv_missing",
                       "libwebsockets' libuv support (Debian package libwebsockets-evlib-uv) is missing: the "
                       "listener uses libwebsockets' poll() loop, which costs more per message with many "
                       "connections; install that package");
    }
    if (have_host_sigpipe) sigaction(SIGPIPE, &host_sigpipe, NULL);
    pthread_mutex_unlock(&sigpipe_lock);
    if (l->context == NULL) {
        cannot_listen(config, " (address in use, or not an address of this host?)", err, err_len);
        free(l);
        return -1;
    }
    /* A context without its vhost: the port was taken after bind_error looked. On a libuv loop its teardown
     * crashes (libwebsockets 4.1), so that context and its loop are left allocated: a leak on an error path that
     * takes a race, where a crash would end the runner's process. */
    struct lws_vhost *vhost = lws_get_vhost_by_name(l->context, "default");
    int port = vhost ? lws_get_vhost_listen_port(vhost) : -1;
    if (port <= 0) {
        cannot_listen(config, " (address in use, or not an address of this host?)", err, err_len);
        if (!l->has_loop) CProgress_listener_destroy(l);
        return -1;
    }
    *bound_port = port;
    *out = l;
    return 0;
}

int CProgress_listener_service(CProgress_listener *l) {
    if (!l->has_loop) return lws_service(l->context, 0);
    /* One pass: blocks until a socket, the wake pipe or a timer is ready. 0 means nothing is left to wait
     * for, which only happens once the context is gone. */
    int alive = uv_run(&l->loop, UV_RUN_ONCE);
    if (accept_out_of_fds) {
        accept_out_of_fds = 0;
        pause_accepting(l);
    }
    return alive ? 0 : (l->context ? 0 : -1);
}

void CProgress_listener_wake(CProgress_listener *l) { lws_cancel_service(l->context); }

void CProgress_listener_set_timer(CProgress_listener *l, int64_t usec) {
    lws_sul_schedule(l->context, 0, &l->timer, timer_fired, usec);
}

static void close_handle(uv_handle_t *handle, void *arg) {
    (void)arg;
    if (!uv_is_closing(handle)) uv_close(handle, NULL);
}

/* The watcher libwebsockets keeps on the listening socket (the one poll handle whose fd accepts). */
static void find_listen_watcher(uv_handle_t *handle, void *arg) {
    CProgress_listener *l = arg;
    uv_os_fd_t fd;
    int accepting = 0;
    socklen_t len = sizeof accepting;
    if (l->listen_watcher == NULL && handle->type == UV_POLL && !uv_is_closing(handle) &&
        uv_fileno(handle, &fd) == 0 && getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0 && accepting)
        l->listen_watcher = (uv_poll_t *)handle;
}

static void resume_accepting(uv_timer_t *timer) {
    CProgress_listener *l = timer->data;
    if (l->listen_watcher && l->listen_cb && !uv_is_closing((uv_handle_t *)l->listen_watcher))
        uv_poll_start(l->listen_watcher, UV_READABLE, l->listen_cb);
}

/* accept() failed for want of file descriptors: stop watching the listening socket for ACCEPT_PAUSE_MS
 * (waiting connections stay in the kernel's backlog), so the service thread keeps serving the clients it
 * has instead of spinning on accept(). Connections are accepted again once descriptors are free. */
static void pause_accepting(CProgress_listener *l) {
    if (!l->has_loop) return;
    if (l->listen_watcher == NULL) uv_walk(&l->loop, find_listen_watcher, l);
    if (l->listen_watcher == NULL || uv_is_closing((uv_handle_t *)l->listen_watcher)) return;
    if (!l->accept_timer_open) {
        if (uv_timer_init(&l->loop, &l->accept_timer) != 0) return;
        l->accept_timer.data = l;
        l->accept_timer_open = 1;
    }
    if (l->listen_watcher->poll_cb) l->listen_cb = l->listen_watcher->poll_cb;
    uv_poll_stop(l->listen_watcher);
    uv_timer_start(&l->accept_timer, resume_accepting, ACCEPT_PAUSE_MS, 0);
    l->accept_pauses++;
    time_t now = time(NULL);
    if (l->accept_warned_at == 0 || now - l->accept_warned_at >= 10) {
        l->accept_warned_at = now;
        log_stderr("warning", "out_of_fds",
                   "listener out of file descriptors (accept: %s); not accepting new connections for %d ms at a "
                   "time (%lu pauses so far), existing clients are still served; raise the process's open-file "
                   "limit (ulimit -n) or lower max_connections",
                   strerror(EMFILE), ACCEPT_PAUSE_MS, l->accept_pauses);
    }
}

/* Runs the loop until libwebsockets' handles are closed, then closes it. */
static void close_loop(CProgress_listener *l) {
    if (!l->has_loop) return;
    for (int i = 0; i < 1000 && uv_loop_alive(&l->loop); i++) uv_run(&l->loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&l->loop) == UV_EBUSY) {
        /* Something still open (a bug in the teardown order): close it rather than leak the epoll fd. */
        uv_walk(&l->loop, close_handle, NULL);
        for (int i = 0; i < 1000 && uv_loop_alive(&l->loop); i++) uv_run(&l->loop, UV_RUN_NOWAIT);
        if (uv_loop_close(&l->loop) != 0)
            log_stderr("error", "loop_not_closed", "the listener's event loop did not close: its handles leak");
    }
    l->has_loop = 0;
}

/* The local TCP port of descriptor fd, or -1 when it is no TCP socket. */
static int local_tcp_port(int fd) {
    int type = 0;
    socklen_t type_len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM) return -1;
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) return -1;
    if (addr.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&addr)->sin_port);
    if (addr.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    return -1;
}

void CProgress_listener_forget_in_child(CProgress_listener *l, int port) {
    /* libwebsockets keeps its descriptors in private structures: they are found by what they are, TCP sockets
     * whose local port is the listener's (the listening socket and every connection it accepted; a connection
     * this process made to the port has an ephemeral local port). Closing a copy leaves the parent's socket
     * and its epoll registration as they are. */
    if (l->has_loop) {
        int backend = uv_backend_fd(&l->loop);
        if (backend >= 0) close(backend);
    }
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return;
    int found[1024];
    size_t n = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL && n < sizeof found / sizeof found[0]) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        int fd = atoi(entry->d_name);
        if (fd != dirfd(dir) && local_tcp_port(fd) == port) found[n++] = fd;
    }
    closedir(dir);
    for (size_t i = 0; i < n; i++) close(found[i]);
}

void CProgress_listener_destroy(CProgress_listener *l) {
    if (l == NULL) return;
    if (l->accept_timer_open) {
        uv_timer_stop(&l->accept_timer);
        uv_close((uv_handle_t *)&l->accept_timer, NULL);
        l->accept_timer_open = 0;
        l->listen_watcher = NULL;
    }
    if (l->context) lws_context_destroy(l->context);
    /* With a foreign loop the context finishes closing its connections in the loop: run it until the
     * context is gone (libwebsockets clears l->context), then close the loop. */
    for (int i = 0; l->has_loop && l->context && i < 1000; i++) {
        uv_run(&l->loop, UV_RUN_NOWAIT);
        if (l->context && i % 100 == 99) lws_context_destroy(l->context);
    }
    close_loop(l);
    free(l);
}

size_t CProgress_ws_pre(void) { return LWS_PRE; }

void CProgress_ws_request_writable(void *conn) { lws_callback_on_writable(conn); }

int CProgress_ws_write_frames(void *conn, unsigned char *buf, size_t len) {
    /* LWS_WRITE_RAW: the bytes are complete frames already; libwebsockets sends them as they are, and keeps
     * (and sends first, before anything of its own such as a pong or a close) what the socket did not take. */
    int n = lws_write(conn, buf + LWS_PRE, len, LWS_WRITE_RAW);
    return n < (int)len ? -1 : 0;
}

int CProgress_ws_buffered(void *conn) { return lws_partial_buffered(conn) ? 1 : 0; }

void CProgress_ws_set_reading(void *conn, int reading) { lws_rx_flow_control(conn, reading ? 1 : 0); }

void CProgress_ws_set_close(void *conn, int code, const char *reason) {
    struct session *s = lws_wsi_user(conn);
    if (s == NULL) return;
    s->close_code = code;
    snprintf(s->close_reason, sizeof s->close_reason, "%s", reason ? reason : "");
}

void CProgress_ws_close_within(void *conn, int secs) { lws_set_timeout(conn, PENDING_TIMEOUT_USER_OK, secs); }

void CProgress_http_respond(void *conn, int status, const char *content_type, const char *headers,
                            const void *body, size_t body_len, int close_after) {
    struct lws *wsi = conn;
    struct session *s = lws_wsi_user(wsi);
    if (s == NULL) return;
    unsigned char buf[LWS_PRE + 4096];
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;
    if (status == 204) {
        /* RFC 9110 §8.6: no Content-Length on a 204. Its absence would make lws_add_http_common_headers close
         * the connection after the answer (it cannot tell where a body would end); a 204 has none, so the
         * connection stays open for the request a preflight precedes. */
        body_len = 0;
        if (lws_add_http_header_status(wsi, 204, &p, end)) return;
    } else if (lws_add_http_common_headers(wsi, (unsigned int)status, content_type, body_len, &p, end)) {
        return;
    }
    /* Extra headers arrive as "Name: value\r\n" lines. */
    for (const char *line = headers; line && *line;) {
        const char *eol = strstr(line, "\r\n");
        const char *colon = strchr(line, ':');
        if (eol == NULL || colon == NULL || colon > eol) break;
        char name[128];
        size_t name_len = (size_t)(colon - line) + 1;
        if (name_len >= sizeof name) break;
        memcpy(name, line, name_len);
        name[name_len] = '\0';
        const char *value = colon + 1;
        while (*value == ' ') value++;
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)value,
                                        (int)(eol - value), &p, end))
            return;
        line = eol + 2;
    }
    if (lws_finalize_write_http_header(wsi, start, &p, end)) return;
    s->body = malloc(body_len ? body_len : 1);
    if (s->body == NULL) return;
    if (body_len) memcpy(s->body, body, body_len);
    s->body_len = body_len;
    s->body_sent = 0;
    s->close_after = close_after;
}
