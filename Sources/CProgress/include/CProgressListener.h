#ifndef CPROGRESS_LISTENER_H
#define CPROGRESS_LISTENER_H
/*
 * The libwebsockets listener, reduced to what the Swift listener needs. This is C because libwebsockets
 * is driven by macros (LWS_PRE padding), a callback with a union-typed `in`, and structs Swift would
 * have to mirror field by field; here they stay behind a handful of plain functions.
 *
 * Threading: every callback runs on the thread that calls CProgress_listener_service(). Only
 * CProgress_listener_wake() may be called from other threads (it is lws_cancel_service()).
 */
#include <stddef.h>
#include <stdint.h>

typedef struct CProgress_listener CProgress_listener;

/* A hint to bring the `lines` cache lines at `p` in before they are read or written (the listener's loops over
 * clients, whose state the kernel's sends in between have evicted). Never faults, whatever `p` is. */
static inline void CProgress_prefetch(const void *p, int lines) {
    for (int i = 0; i < lines; i++) __builtin_prefetch((const char *)p + 64 * i, 1, 3);
}

/* Callbacks into Swift; `ctx` is CProgress_listener_config.ctx, `conn` an opaque connection handle
 * (a struct lws *) valid until on_ws_close / the end of on_http. */
typedef struct {
    void *ctx;
    /* An HTTP request: method ("GET", "POST", ...), decoded path, query arguments as "name=value" pairs
     * each NUL-terminated one after the other (query_len bytes in all; decoded by libwebsockets), the
     * Authorization and Origin headers ("" if none), the peer address, and the body: read (body_len bytes) for a
     * method other than GET and HEAD whose Content-Length is at most max_body_bytes, so the call comes once it is
     * in; else body is NULL and body_len the Content-Length declared (0 for none). Must call CProgress_http_respond
     * once. */
    void (*on_http)(void *ctx, void *conn, const char *method, const char *path, const char *query,
                    size_t query_len, const char *authorization, const char *origin, const char *peer,
                    const char *body, size_t body_len);
    /* A WebSocket handshake completed; origin is the Origin header ("" if none). Returns a non-zero
     * connection id; 0 refuses (closes). */
    uint64_t (*on_ws_open)(void *ctx, void *conn, const char *path, const char *query, size_t query_len,
                           const char *authorization, const char *origin, const char *peer);
    /* A whole message (fragments reassembled), at most max_message_bytes. */
    void (*on_ws_message)(void *ctx, uint64_t id, const char *data, size_t len, int binary);
    /* The connection can take a write. Call CProgress_ws_write_frames at most once, then return 1 if more is
     * waiting (writable is requested again), 0 if not, -1 to close (after CProgress_ws_set_close). */
    int (*on_ws_writable)(void *ctx, uint64_t id, void *conn);
    /* The connection is gone (peer closed, error, or our close). */
    void (*on_ws_close)(void *ctx, uint64_t id);
    /* CProgress_listener_wake() was called (on the service thread). */
    void (*on_wake)(void *ctx);
    /* The timer set with CProgress_listener_set_timer fired. */
    void (*on_timer)(void *ctx);
} CProgress_listener_callbacks;

typedef struct {
    const char *iface;            /* IP address to bind, NULL = every interface */
    int port;                     /* 0 = any free port */
    size_t max_message_bytes;     /* larger WebSocket messages are closed with 1009 */
    size_t max_body_bytes;        /* larger HTTP request bodies are not read (on_http gets body NULL) */
    int header_timeout_secs;      /* a request whose headers are not complete by then is dropped */
    int deflate;                  /* offer permessage-deflate (RFC 7692) to clients that ask for it */
    CProgress_listener_callbacks callbacks;
} CProgress_listener_config;

/* Creates the context and binds. Returns 0 and sets *out and *bound_port, or -1 with a message in err. */
int CProgress_listener_create(const CProgress_listener_config *config, CProgress_listener **out, int *bound_port,
                              char *err, size_t err_len);
/* Runs one round of the event loop (blocks until there is something to do or a wake). <0: fatal. */
int CProgress_listener_service(CProgress_listener *l);
/* Any thread: interrupts the service call, which then calls on_wake. */
void CProgress_listener_wake(CProgress_listener *l);
/* Service thread: on_timer runs once after `usec` microseconds (replaces a pending timer). */
void CProgress_listener_set_timer(CProgress_listener *l, int64_t usec);
/* Service thread, after the service loop ended: closes every connection and frees everything. */
void CProgress_listener_destroy(CProgress_listener *l);
/* In a forked child (one thread; the service thread is the parent's): closes the child's copies of the
 * listener's descriptors (the listening socket, its accepted connections, the loop's epoll descriptor) without
 * libwebsockets or libuv, whose teardown would write to sockets the parent still serves. `port` is the bound
 * port. The rest of the listener stays allocated and must never be used again in this process. */
void CProgress_listener_forget_in_child(CProgress_listener *l, int port);

/* The bytes a WebSocket message buffer must reserve before its payload (LWS_PRE). */
size_t CProgress_ws_pre(void);
/* Service thread: asks for on_ws_writable on this connection. */
void CProgress_ws_request_writable(void *conn);
/* Service thread: writes `len` bytes of complete, unmasked WebSocket frames starting at buf + LWS_PRE, in
 * one send. Allowed inside on_ws_writable, and outside any callback of this connection when
 * CProgress_ws_buffered() is 0. What the socket does not take at once is kept by libwebsockets, sent
 * before anything else on the connection, and followed by on_ws_writable. Returns 0, or -1 on error. */
int CProgress_ws_write_frames(void *conn, unsigned char *buf, size_t len);
/* Service thread: 1 while libwebsockets still holds unsent bytes of an earlier write (on_ws_writable follows
 * once they are out), else 0. */
int CProgress_ws_buffered(void *conn);
/* Service thread: stops (reading 0) or resumes (1) reading this connection's messages. What libwebsockets has
 * already read stays with it and reaches on_ws_message after resuming, in order. */
void CProgress_ws_set_reading(void *conn, int reading);
/* Service thread: the close code and reason sent when on_ws_writable next returns -1. */
void CProgress_ws_set_close(void *conn, int code, const char *reason);
/* Service thread: drops the connection if it is still open `secs` seconds from now (a client that stopped
 * reading never becomes writable, so its close frame could wait forever). */
void CProgress_ws_close_within(void *conn, int secs);
/* Service thread, inside on_http: the response. headers: extra "Name: value\r\n" lines or NULL.
 * The body is copied. close_after: close the connection once sent (for requests whose body we skip).
 * Status 204 has no body: content_type and body are ignored, and no Content-Type or Content-Length is sent. */
void CProgress_http_respond(void *conn, int status, const char *content_type, const char *headers,
                            const void *body, size_t body_len, int close_after);

/* permessage-deflate (deflate.c): one compressor per listener, service thread only. */
typedef struct CProgress_deflater CProgress_deflater;
/* NULL when out of memory. level: zlib's 1 (fastest) to 9. */
CProgress_deflater *CProgress_deflater_create(int level);
void CProgress_deflater_destroy(CProgress_deflater *d);
/* Compresses one whole message as RFC 7692 sends it (raw deflate, no context from earlier messages, the
 * trailing 00 00 ff ff removed) into out. Returns its length, or -1 when it does not fit `cap` bytes. */
long CProgress_deflate_message(CProgress_deflater *d, const unsigned char *in, size_t len, unsigned char *out,
                               size_t cap);
/* Service thread, once the connection is open: how its frames may be compressed. 0: not at all (the extension
 * was not negotiated, or the client restricted the server's window); 1: each message on its own (the client asked
 * for server_no_context_takeover); 2: a message may also refer to the one before (CProgress_window_deflate: the
 * client keeps its window between messages). */
int CProgress_ws_deflate_mode(void *conn);

/* permessage-deflate with context takeover (deflate_window.c): one per client, owned by its connection and used
 * only on the service thread. It remembers the last message it compressed for that client, which the client's
 * inflater holds in its window. */
typedef struct CProgress_window CProgress_window;
/* The longest message it compresses (longer ones go out through CProgress_deflate_message). */
#define CPROGRESS_WINDOW_MESSAGE_MAX 1024
/* The room `out` needs for a message of `len` bytes. */
size_t CProgress_window_bound(size_t len);
/* NULL when out of memory. */
CProgress_window *CProgress_window_create(void);
void CProgress_window_destroy(CProgress_window *w);
/* Compresses a message of 1..CPROGRESS_WINDOW_MESSAGE_MAX bytes for this client as RFC 7692 sends it (the trailing
 * 00 00 ff ff removed), referring to the previous message it compressed, which must be the last compressed
 * message the client received. Returns its length, or -1 (bad length, `cap` under CProgress_window_bound). */
long CProgress_window_deflate(CProgress_window *w, const unsigned char *in, size_t len, unsigned char *out,
                              size_t cap);
/* The client received a compressed message that did not go through this window: the next one refers to
 * nothing before it. */
void CProgress_window_forget(CProgress_window *w);

#endif
