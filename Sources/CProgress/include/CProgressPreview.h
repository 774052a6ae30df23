#ifndef CPROGRESS_PREVIEW_H
#define CPROGRESS_PREVIEW_H
/*
 * Preview image work in C: the pixel loops run at C speed, and libpng's setjmp/longjmp error handling stays
 * inside these functions, so it never crosses a Swift frame (reading uses the simplified png_image API;
 * writing the full API, for control over compression: see preview.c).
 */
#include <stddef.h>
#include <stdint.h>

/* Area-average (box filter) downscale of 8-bit pixels with `channels` (1, 3 or 4) interleaved channels:
 * every source pixel contributes to the destination pixels it overlaps, weighted by the overlap, so
 * detail is averaged rather than aliased. dst is dst_w x dst_h, tightly packed. */
void CProgress_downscale(const uint8_t *src, int src_w, int src_h, size_t src_stride, int channels, uint8_t *dst,
                         int dst_w, int dst_h);

/* Writes tightly packed 8-bit gray/RGB/RGBA pixels as a PNG file. Returns 0, or -1 with a message in err. */
int CProgress_png_write(const char *path, const uint8_t *pixels, int width, int height, int channels, char *err,
                        size_t err_len);

/* Reads a PNG file (any PNG: palette, 16-bit, interlaced...) as 8-bit pixels of 1, 3 or 4 channels (gray,
 * RGB, RGBA, chosen from the file; 16-bit samples without a gAMA or sRGB chunk are taken as sRGB, as
 * browsers show them). Files whose pixels would exceed max_pixels are refused. On success
 * returns 0 and a malloc'd buffer the caller frees; else -1 with a message in err. */
int CProgress_png_read(const char *path, size_t max_pixels, uint8_t **out, int *width, int *height, int *channels,
                       char *err, size_t err_len);

#endif
