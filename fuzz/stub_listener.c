/* Fuzz builds only: replaces Sources/CProgress/listener.c (the libwebsockets side) with a socket-free stand-in.
 *
 * CProgress_listener_create keeps the callbacks the Swift Listener registers, and the fuzz harness calls
 * them the way listener.c does (on_http, on_ws_open, on_ws_message, on_ws_writable, on_ws_close), so the
 * Swift side is driven through its real C entry points with no change to the engine's sources.
 * CProgress_listener_service returns -1 at once: the Swift service thread ends immediately and the fuzzing
 * thread becomes the listener's only ("service") thread. Writes and HTTP responses are checked and dropped. */
#include "CProgressListener.h"

#include <stdlib.h>
#include <string.h>

#define STUB_PRE 16

struct CProgress_listener {
    CProgress_listener_callbacks cb;
};

static CProgress_listener *current;

int CProgress_listener_create(const CProgress_listener_config *config, CProgress_listener **out, int *bound_port,
                              char *err, size_t err_len) {
    (void)err; (void)err_len;
    CProgress_listener *l = calloc(1, sizeof *l);
    if (l == NULL) return -1;
    l->cb = config->callbacks;
    current = l;
    *out = l;
    *bound_port = 1;
    return 0;
}

int CProgress_listener_service(CProgress_listener *l) { (void)l; return -1; }
void CProgress_listener_wake(CProgress_listener *l) { (void)l; }
void CProgress_listener_set_timer(CProgress_listener *l, int64_t usec) { (void)l; (void)usec; }

void CProgress_listener_destroy(CProgress_listener *l) {
    if (current == l) current = NULL;
    free(l);
}

/* The stub holds no descriptors; the fuzzer never forks. */
void CProgress_listener_forget_in_child(CProgress_listener *l, int port) {
    (void)l;
    (void)port;
}

size_t CProgress_ws_pre(void) { return STUB_PRE; }
void CProgress_ws_request_writable(void *conn) { (void)conn; }

/* Touches every byte the Swift side says it wrote, so ASan sees an out-of-bounds message buffer. */
static volatile unsigned char sink;
static void touch(const unsigned char *p, size_t n) {
    unsigned char x = 0;
    for (size_t i = 0; i < n; i++) x ^= p[i];
    sink = x;
}

int CProgress_ws_write_frames(void *conn, unsigned char *buf, size_t len) {
    (void)conn;
    touch(buf, STUB_PRE + len);
    return 0;
}

int CProgress_ws_buffered(void *conn) { (void)conn; return 0; }

void CProgress_ws_set_reading(void *conn, int reading) { (void)conn; (void)reading; }

void CProgress_ws_set_close(void *conn, int code, const char *reason) {
    (void)conn; (void)code;
    touch((const unsigned char *)reason, strlen(reason));
}

void CProgress_ws_close_within(void *conn, int secs) { (void)conn; (void)secs; }

void CProgress_http_respond(void *conn, int status, const char *content_type, const char *headers,
                            const void *body, size_t body_len, int close_after) {
    (void)conn; (void)close_after;
    if (status < 100 || status > 599) abort();
    touch((const unsigned char *)content_type, strlen(content_type));
    if (headers) touch((const unsigned char *)headers, strlen(headers));
    if (body_len) touch(body, body_len);
}

/* --- Harness side: the calls listener.c makes into Swift. --- */

int FuzzStub_has_listener(void) { return current != NULL; }

void FuzzStub_http(const char *method, const char *path, const char *query, size_t query_len, const char *authorization,
                   const char *origin, const char *body, size_t body_len) {
    static int conn;
    current->cb.on_http(current->cb.ctx, &conn, method, path, query, query_len, authorization, origin, "127.0.0.1",
                        body, body_len);
}

uint64_t FuzzStub_ws_open(const char *path, const char *query, size_t query_len, const char *authorization,
                          const char *origin) {
    static int conn;
    return current->cb.on_ws_open(current->cb.ctx, &conn, path, query, query_len, authorization, origin, "127.0.0.1");
}

void FuzzStub_ws_message(uint64_t id, const char *data, size_t len, int binary) {
    current->cb.on_ws_message(current->cb.ctx, id, data, len, binary);
}

/* Drains the connection's queue as libwebsockets would: writable until it says nothing is left. */
void FuzzStub_ws_drain(uint64_t id) {
    static int conn;
    for (int i = 0; i < 100000; i++) {
        if (current->cb.on_ws_writable(current->cb.ctx, id, &conn) != 1) return;
    }
    abort(); /* a queue that never empties */
}

void FuzzStub_ws_close(uint64_t id) { current->cb.on_ws_close(current->cb.ctx, id); }

/* permessage-deflate (deflate.c, which needs libwebsockets) is never negotiated here: no client offers it, so no
 * message is compressed. */
CProgress_deflater *CProgress_deflater_create(int level) {
    (void)level;
    return NULL;
}

void CProgress_deflater_destroy(CProgress_deflater *d) { (void)d; }

long CProgress_deflate_message(CProgress_deflater *d, const unsigned char *in, size_t len, unsigned char *out,
                               size_t cap) {
    (void)d; (void)in; (void)len; (void)out; (void)cap;
    return -1;
}

int CProgress_ws_deflate_mode(void *conn) {
    (void)conn;
    return 0;
}
