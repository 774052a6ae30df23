/* The client's side of permessage-deflate for the `deflate` target: one raw inflater kept across messages, as a
 * client with context takeover keeps it (zlib, not instrumented). */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "FuzzStub.h"

static z_stream client;
static int ready;

void FuzzStub_inflate_reset(void) {
    if (ready) inflateEnd(&client);
    memset(&client, 0, sizeof client);
    ready = inflateInit2(&client, -15) == Z_OK;
}

int FuzzStub_inflate_matches(const unsigned char *packed, size_t n, const unsigned char *msg, size_t len) {
    if (!ready) return 0;
    static const unsigned char trailer[4] = {0x00, 0x00, 0xff, 0xff};
    unsigned char *out = malloc(len + 64);
    if (out == NULL) return 0;
    client.next_out = out;
    client.avail_out = (uInt)(len + 64);
    client.next_in = (unsigned char *)packed;
    client.avail_in = (uInt)n;
    int rc = inflate(&client, Z_SYNC_FLUSH);
    int ok = (rc == Z_OK || rc == Z_BUF_ERROR) && client.avail_in == 0;
    if (ok) {
        client.next_in = (unsigned char *)trailer;
        client.avail_in = 4;
        rc = inflate(&client, Z_SYNC_FLUSH);
        ok = (rc == Z_OK || rc == Z_BUF_ERROR) && client.avail_in == 0;
    }
    ok = ok && (size_t)(len + 64 - client.avail_out) == len && memcmp(out, msg, len) == 0;
    free(out);
    return ok;
}
