/* The harness's calls into fuzz/stub_listener.c (the listener's C -> Swift callbacks, driven without sockets). */
#ifndef FUZZ_STUB_H
#define FUZZ_STUB_H
#include <stddef.h>
#include <stdint.h>
int FuzzStub_has_listener(void);
void FuzzStub_http(const char *method, const char *path, const char *query, size_t query_len, const char *authorization,
                   const char *origin, const char *body, size_t body_len);
uint64_t FuzzStub_ws_open(const char *path, const char *query, size_t query_len, const char *authorization,
                          const char *origin);
void FuzzStub_ws_message(uint64_t id, const char *data, size_t len, int binary);
void FuzzStub_ws_drain(uint64_t id);
void FuzzStub_ws_close(uint64_t id);
/* fuzz/inflate_check.c: a client's inflater kept across messages (`deflate` target). */
void FuzzStub_inflate_reset(void);
/* 1 when `packed` (a message as RFC 7692 sends it) inflates to exactly msg[0..<len] after what came before. */
int FuzzStub_inflate_matches(const unsigned char *packed, size_t n, const unsigned char *msg, size_t len);
#endif
