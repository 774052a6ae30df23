/*
 * permessage-deflate with context takeover for small messages: a client's inflater keeps the window of what it
 * inflated (RFC 7692 §7.1.1.1, unless it asked for server_no_context_takeover), so a message may refer back to
 * the last compressed message this client received. Consecutive delta patches differ in a few digits; as
 * references to the previous message they shrink to a few dozen bytes.
 *
 * zlib's deflate would do it, but ends each sync-flushed block by building Huffman trees (~4 us a message on
 * the 2-core machine), too much for a per-client, per-delivery cost. This encoder emits one fixed-Huffman block
 * (RFC 1951 §3.2.6) with greedy matches found through two small hash tables: one over the previous message
 * (kept from its own encoding), one over the message so far. The output ends as Z_SYNC_FLUSH ends it, without
 * the 00 00 ff ff that RFC 7692 §7.2.1 removes.
 */
#include "CProgressListener.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW CPROGRESS_WINDOW_MESSAGE_MAX
#define HASH_BITS 9
#define HASH_SIZE (1u << HASH_BITS)
#define NO_POS 0xFFFFu
#define MIN_MATCH 4 /* a fixed-code match of 3 costs about as many bits as 3 literals */
#define MAX_MATCH 258

struct CProgress_window {
    uint32_t len;                 /* bytes of the previous message in buf (0: no history) */
    uint16_t *table;              /* hash of 4 bytes -> last position in buf (or a stale one, NO_POS at first) */
    uint16_t *next;               /* the table being built over the message now encoded */
    unsigned char buf[WINDOW];
    uint16_t tables[2][HASH_SIZE];
};

CProgress_window *CProgress_window_create(void) {
    CProgress_window *w = malloc(sizeof *w);
    if (w == NULL) return NULL;
    memset(w->tables, 0xFF, sizeof w->tables);
    w->len = 0;
    w->table = w->tables[0];
    w->next = w->tables[1];
    return w;
}

void CProgress_window_destroy(CProgress_window *w) { free(w); }

size_t CProgress_window_bound(size_t len) {
    /* 3 + 9 bits a literal (a match costs fewer bits a byte) + 7 (end of block) + 3 + 7 (sync block, padding). */
    return len + len / 8 + 8;
}

void CProgress_window_forget(CProgress_window *w) {
    if (w != NULL) w->len = 0;
}

static inline uint32_t hash4(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return (v * 2654435761u) >> (32 - HASH_BITS);
}

/* An LSB-first bit writer (RFC 1951 §3.1.1); `out` has room for everything written (the caller checked). */
typedef struct {
    unsigned char *out;
    uint64_t acc;
    unsigned bits;
} bit_writer;

static inline void put_bits(bit_writer *b, uint32_t value, unsigned count) {
    b->acc |= (uint64_t)value << b->bits;
    b->bits += count;
    while (b->bits >= 8) {
        *b->out++ = (unsigned char)b->acc;
        b->acc >>= 8;
        b->bits -= 8;
    }
}

/* Huffman codes go out most significant bit first (§3.1.1): reversed into the LSB-first stream. */
static inline void put_code(bit_writer *b, uint32_t code, unsigned count) {
    put_bits(b, __builtin_bitreverse16((uint16_t)code) >> (16 - count), count);
}

static inline void put_literal(bit_writer *b, unsigned char c) {
    if (c < 144) put_code(b, 0x30u + c, 8);
    else put_code(b, 0x190u + (c - 144u), 9);
}

static inline void put_symbol(bit_writer *b, unsigned sym) { /* 256..287 */
    if (sym < 280) put_code(b, sym - 256u, 7);
    else put_code(b, 0xC0u + (sym - 280u), 8);
}

static void put_match(bit_writer *b, unsigned length, unsigned distance) {
    /* Length 3..258 -> symbol 257..285 and extra bits (§3.2.5). */
    unsigned l1 = length - 3;
    if (length == MAX_MATCH) {
        put_symbol(b, 285);
    } else if (l1 < 8) {
        put_symbol(b, 257 + l1);
    } else {
        unsigned k = 31u - (unsigned)__builtin_clz(l1); /* 3..7 */
        put_symbol(b, 257 + 4 * (k - 1) + ((l1 >> (k - 2)) & 3));
        put_bits(b, l1 & ((1u << (k - 2)) - 1), k - 2);
    }
    /* Distance 1..32768 -> code 0..29 (5 fixed bits) and extra bits. */
    unsigned d1 = distance - 1;
    if (d1 < 4) {
        put_code(b, d1, 5);
    } else {
        unsigned k = 31u - (unsigned)__builtin_clz(d1); /* 2..14 */
        put_code(b, 2 * k + ((d1 >> (k - 1)) & 1), 5);
        put_bits(b, d1 & ((1u << (k - 1)) - 1), k - 1);
    }
}

static inline unsigned match_length(const unsigned char *a, const unsigned char *b, unsigned limit) {
    unsigned n = 0;
    while (n + 8 <= limit) {
        uint64_t x, y;
        memcpy(&x, a + n, 8);
        memcpy(&y, b + n, 8);
        if (x != y) return n + (unsigned)__builtin_ctzll(x ^ y) / 8;
        n += 8;
    }
    while (n < limit && a[n] == b[n]) n++;
    return n;
}

long CProgress_window_deflate(CProgress_window *w, const unsigned char *in, size_t len, unsigned char *out,
                              size_t cap) {
    if (w == NULL || len == 0 || len > WINDOW || cap < CProgress_window_bound(len)) return -1;
    bit_writer b = {out, 0, 0};
    put_bits(&b, 2, 3); /* BFINAL 0, BTYPE 01: fixed Huffman codes */
    const unsigned char *prev = w->buf;
    const uint32_t prev_len = w->len;
    size_t i = 0;
    while (i < len) {
        unsigned best = 0, distance = 0;
        if (i + MIN_MATCH <= len) {
            uint32_t h = hash4(in + i);
            unsigned limit = (unsigned)(len - i < MAX_MATCH ? len - i : MAX_MATCH);
            /* Neither table is cleared between messages: an entry may be left from an older message, so a
             * candidate is only a position to compare, and must lie inside the text it refers to. */
            uint16_t p = w->next[h];
            if (p < i) { /* earlier in this message (the source may run into the bytes it produces) */
                unsigned n = match_length(in + p, in + i, limit);
                if (n >= MIN_MATCH) {
                    best = n;
                    distance = (unsigned)(i - p);
                }
            }
            p = w->table[h];
            if (p + MIN_MATCH <= prev_len && best < limit) { /* the previous message: it ends where this one begins */
                unsigned room = prev_len - p;
                unsigned n = match_length(prev + p, in + i, limit < room ? limit : room);
                if (n >= MIN_MATCH && n > best) {
                    best = n;
                    distance = (unsigned)(prev_len - p + i);
                }
            }
            w->next[h] = (uint16_t)i;
        }
        if (best) {
            put_match(&b, best, distance);
            size_t end = i + best;
            for (i++; i < end; i++) {
                if (i + MIN_MATCH <= len) w->next[hash4(in + i)] = (uint16_t)i;
            }
        } else {
            put_literal(&b, in[i++]);
        }
    }
    put_symbol(&b, 256); /* end of block */
    put_bits(&b, 0, 3);  /* the empty stored block of the sync flush: BFINAL 0, BTYPE 00, then to a byte */
    if (b.bits) put_bits(&b, 0, 8 - b.bits);
    /* This message is the next one's history (the client's window now ends with it). */
    memcpy(w->buf, in, len);
    w->len = (uint32_t)len;
    uint16_t *t = w->table;
    w->table = w->next;
    w->next = t;
    return (long)(b.out - out);
}
