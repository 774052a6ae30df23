/*
 * permessage-deflate (RFC 7692) for the listener's frames: each message compressed on its own, once, and the
 * compressed frame shared by every client that negotiated the extension. A fresh raw-deflate stream per message
 * never refers to an earlier message, which is valid whatever context takeover the client expects (it keeps a
 * window the server simply never uses), so one compressed frame suits every client. libwebsockets' own
 * extension still negotiates and inflates what clients send; it compresses only through lws_write, which the
 * listener does not use for its pre-framed messages.
 */
#include "CProgressListener.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

struct CProgress_deflater {
    z_stream z;
};

CProgress_deflater *CProgress_deflater_create(int level) {
    CProgress_deflater *d = calloc(1, sizeof *d);
    if (d == NULL) return NULL;
    /* Raw deflate (negative window bits), the 32 KiB window RFC 7692 allows by default. */
    if (deflateInit2(&d->z, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(d);
        return NULL;
    }
    return d;
}

void CProgress_deflater_destroy(CProgress_deflater *d) {
    if (d == NULL) return;
    deflateEnd(&d->z);
    free(d);
}

long CProgress_deflate_message(CProgress_deflater *d, const unsigned char *in, size_t len, unsigned char *out,
                               size_t cap) {
    if (d == NULL || deflateReset(&d->z) != Z_OK) return -1;
    d->z.next_in = (unsigned char *)in;
    d->z.avail_in = (uInt)len;
    d->z.next_out = out;
    d->z.avail_out = (uInt)cap;
    /* Z_SYNC_FLUSH ends the message on a byte boundary with an empty stored block, 00 00 ff ff, which
     * RFC 7692 §7.2.1 has the sender remove (the receiver appends it again). */
    int rc = deflate(&d->z, Z_SYNC_FLUSH);
    if (rc != Z_OK || d->z.avail_in != 0 || d->z.avail_out == 0) return -1;
    size_t n = cap - d->z.avail_out;
    if (n < 4 || memcmp(out + n - 4, "\x00\x00\xff\xff", 4) != 0) return -1;
    return (long)(n - 4);
}

int CProgress_ws_deflate_mode(void *conn) {
    /* Fails only when the extension is not active on this connection. The option is set to its default (an
     * inflate buffer of 2^10 bytes), so nothing changes; an unknown option name would crash libwebsockets 4.1
     * (it compares the name with its list's NULL sentinel). */
    if (lws_set_extension_option(conn, "permessage-deflate", "rx_buf_size", "10") != 0) return 0;
    char offer[256];
    if (lws_hdr_copy(conn, offer, sizeof offer, WSI_TOKEN_EXTENSIONS) < 0) return 0;
    /* A client that limits the server's window gets uncompressed frames (valid under the extension): the
     * shared frames use the default 32 KiB window. */
    if (strstr(offer, "server_max_window_bits") != NULL) return 0;
    /* libwebsockets agrees to server_no_context_takeover when offered; then every message must stand alone. */
    return strstr(offer, "server_no_context_takeover") != NULL ? 1 : 2;
}
