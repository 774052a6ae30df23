#include "CProgressPreview.h"

#include <errno.h>
#include <png.h>
#include <zlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void CProgress_downscale(const uint8_t *src, int src_w, int src_h, size_t src_stride, int channels, uint8_t *dst,
                         int dst_w, int dst_h) {
    /* Separable box filter in fixed point: first rows (horizontal), then columns. Coverage of source
     * pixel x by destination pixel d spans [d*sx, (d+1)*sx) in source coordinates. */
    const double sx = (double)src_w / dst_w, sy = (double)src_h / dst_h;
    float *row = calloc((size_t)dst_w * (size_t)channels, sizeof(float));
    float *acc = calloc((size_t)dst_w * (size_t)channels, sizeof(float));
    if (row == NULL || acc == NULL) {
        free(row);
        free(acc);
        memset(dst, 0, (size_t)dst_w * (size_t)dst_h * (size_t)channels);
        return;
    }
    int sy_index = 0;
    for (int dy = 0; dy < dst_h; dy++) {
        double y0 = dy * sy, y1 = (dy + 1) * sy;
        memset(acc, 0, (size_t)dst_w * (size_t)channels * sizeof(float));
        for (sy_index = (int)y0; sy_index < src_h && sy_index < y1; sy_index++) {
            double wy = (sy_index + 1 < y1 ? sy_index + 1 : y1) - (sy_index > y0 ? sy_index : y0);
            if (wy <= 0) continue;
            const uint8_t *line = src + (size_t)sy_index * src_stride;
            for (int dx = 0; dx < dst_w; dx++) {
                double x0 = dx * sx, x1 = (dx + 1) * sx;
                float sum[4] = {0, 0, 0, 0};
                for (int x = (int)x0; x < src_w && x < x1; x++) {
                    float wx = (float)((x + 1 < x1 ? x + 1 : x1) - (x > x0 ? x : x0));
                    const uint8_t *p = line + (size_t)x * (size_t)channels;
                    if (channels == 4) {
                        /* Colour weighted by alpha (premultiplied), so transparent pixels' colour does not
                         * bleed into visible neighbours; divided out again below. */
                        float a = wx * p[3];
                        sum[0] += a * p[0];
                        sum[1] += a * p[1];
                        sum[2] += a * p[2];
                        sum[3] += a;
                    } else {
                        for (int c = 0; c < channels; c++) sum[c] += wx * p[c];
                    }
                }
                for (int c = 0; c < channels; c++) acc[(size_t)dx * channels + c] += (float)wy * sum[c];
            }
        }
        const float norm = (float)(1.0 / (sx * sy));
        uint8_t *out = dst + (size_t)dy * (size_t)dst_w * (size_t)channels;
        if (channels == 4) {
            for (int dx = 0; dx < dst_w; dx++) {
                const float *px = acc + (size_t)dx * 4;
                uint8_t *o = out + (size_t)dx * 4;
                float alpha = px[3] * norm;
                for (int c = 0; c < 3; c++) {
                    float v = px[3] > 0 ? px[c] / px[3] + 0.5f : 0.f;
                    o[c] = v >= 255.f ? 255 : (uint8_t)v;
                }
                alpha += 0.5f;
                o[3] = alpha >= 255.f ? 255 : (uint8_t)alpha;
            }
        } else {
            for (size_t i = 0; i < (size_t)dst_w * (size_t)channels; i++) {
                float v = acc[i] * norm + 0.5f;
                out[i] = v >= 255.f ? 255 : (uint8_t)v;
            }
        }
    }
    free(row);
    free(acc);
}

static png_uint_32 format_for(int channels) {
    return channels == 1 ? PNG_FORMAT_GRAY : channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_RGBA;
}

/* libpng reports errors by longjmp to the setjmp below, in this same C function: no Swift frame is ever
 * between the two. The full API is used for writing (the simplified png_image API, used for reading, offers
 * no control over compression): RLE-only deflate with the Paeth filter encodes a 512 px preview in about
 * 9 ms, against 25-93 ms for libpng's defaults and 15-16 ms for png_image's FAST flag, at the default's
 * file size. */
struct png_write_state {
    FILE *file;
    char *err;
    size_t err_len;
};

static void png_write_error(png_structp png, png_const_charp message) {
    struct png_write_state *state = png_get_error_ptr(png);
    snprintf(state->err, state->err_len, "libpng could not write the preview: %s", message);
    png_longjmp(png, 1);
}

static void png_write_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message; /* warnings (e.g. about chunks) do not affect the image */
}

int CProgress_png_write(const char *path, const uint8_t *pixels, int width, int height, int channels, char *err,
                        size_t err_len) {
    struct png_write_state state = {fopen(path, "wbe"), err, err_len}; /* "e": O_CLOEXEC */
    if (state.file == NULL) {
        snprintf(err, err_len, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, png_write_error, png_write_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (png == NULL || info == NULL) {
        snprintf(err, err_len, "libpng could not start a PNG (out of memory)");
        png_destroy_write_struct(&png, NULL);
        fclose(state.file);
        return -1;
    }
    /* `volatile`: read after a longjmp back here. */
    volatile int status = -1;
    if (setjmp(png_jmpbuf(png)) == 0) {
        png_init_io(png, state.file);
        int color = channels == 1 ? PNG_COLOR_TYPE_GRAY : channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA;
        png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, color, PNG_INTERLACE_NONE,
                     PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_set_compression_strategy(png, Z_RLE);
        png_set_compression_level(png, 6);
        png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_PAETH);
        png_write_info(png, info);
        for (int y = 0; y < height; y++) png_write_row(png, pixels + (size_t)y * (size_t)width * (size_t)channels);
        png_write_end(png, NULL);
        status = 0;
    }
    png_destroy_write_struct(&png, &info);
    if (fclose(state.file) != 0 && status == 0) {
        snprintf(err, err_len, "cannot write %s: %s", path, strerror(errno));
        status = -1;
    }
    return status;
}

int CProgress_png_read(const char *path, size_t max_pixels, uint8_t **out, int *width, int *height, int *channels,
                       char *err, size_t err_len) {
    *out = NULL;
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, path)) {
        snprintf(err, err_len, "cannot read PNG %s: %s", path, image.message);
        png_image_free(&image);
        return -1;
    }
    /* A 16-bit PNG without gAMA or sRGB chunk is sRGB-encoded, as image tools write it and as browsers and
     * Pillow show it; libpng's default would take it for linear light (mid grey 0x8080 became 186). A gAMA
     * or sRGB chunk still decides. Set after begin_read, which clears the structure, for finish_read. */
    image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
    if ((size_t)image.width * image.height > max_pixels) {
        snprintf(err, err_len, "PNG %s is %ux%u, larger than the %zu pixels previews accept", path, image.width,
                 image.height, max_pixels);
        png_image_free(&image);
        return -1;
    }
    int n = (image.format & PNG_FORMAT_FLAG_COLOR) ? 3 : 1;
    if (image.format & PNG_FORMAT_FLAG_ALPHA) n = 4; /* gray+alpha widens to RGBA */
    image.format = format_for(n);
    size_t size = PNG_IMAGE_SIZE(image);
    uint8_t *buffer = malloc(size ? size : 1);
    if (buffer == NULL) {
        snprintf(err, err_len, "out of memory decoding %s", path);
        png_image_free(&image);
        return -1;
    }
    if (!png_image_finish_read(&image, NULL, buffer, 0, NULL)) {
        snprintf(err, err_len, "corrupt PNG %s: %s", path, image.message);
        free(buffer);
        png_image_free(&image);
        return -1;
    }
    *out = buffer;
    *width = (int)image.width;
    *height = (int)image.height;
    *channels = n;
    return 0;
}
