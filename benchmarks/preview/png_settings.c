/*
 * How libpng's encoder settings trade time for size on a preview-sized image: the simplified API as the
 * engine calls it (default, and PNG_IMAGE_FLAG_FAST) against the full API with other zlib levels,
 * strategies and filters. Not part of `make bench-preview`; it backs the table in README.md.
 *
 *   python3 bench_preview.py --dump /tmp/pv      # writes textured.rgb and smooth.rgb (512x512 RGB, raw)
 *   make png_settings && ./png_settings /tmp/pv/textured.rgb /tmp/pv/smooth.rgb
 */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#define SIDE 512
#define RUNS 15

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static long file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static int simplified(const char *path, const unsigned char *px, int fast) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = image.height = SIDE;
    image.format = PNG_FORMAT_RGB;
    if (fast) image.flags |= PNG_IMAGE_FLAG_FAST;
    int ok = png_image_write_to_file(&image, path, 0, px, SIDE * 3, NULL);
    png_image_free(&image);
    return ok ? 0 : -1;
}

static int full(const char *path, const unsigned char *px, int level, int strategy, int filters) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, SIDE, SIDE, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, level);
    if (strategy >= 0) png_set_compression_strategy(png, strategy); /* else libpng's default (Z_FILTERED) */
    png_set_filter(png, PNG_FILTER_TYPE_BASE, filters);
    png_write_info(png, info);
    for (int y = 0; y < SIDE; y++) png_write_row(png, (png_const_bytep)(px + (size_t)y * SIDE * 3));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return fclose(f) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE.rgb... (512x512 RGB, raw)\n", argv[0]);
        return 2;
    }
    const char *out = "png_settings.tmp.png";
    const char *names[] = {
        "simplified API, default (the engine)", "simplified API, PNG_IMAGE_FLAG_FAST",
        "full API, level 1, all filters",       "full API, level 6, all filters",
        "full API, Z_RLE, Paeth filter",        "full API, Z_RLE, all filters",
    };
    unsigned char *px = malloc(SIDE * SIDE * 3);
    for (int a = 1; a < argc; a++) {
        FILE *f = fopen(argv[a], "rb");
        if (f == NULL || fread(px, 1, SIDE * SIDE * 3, f) != SIDE * SIDE * 3) {
            fprintf(stderr, "%s: not a 512x512 RGB raw file\n", argv[a]);
            return 2;
        }
        fclose(f);
        printf("%s: median of %d, encode + write\n", argv[a], RUNS);
        for (int mode = 0; mode < 6; mode++) {
            double t[RUNS];
            for (int r = 0; r < RUNS; r++) {
                double t0 = now();
                int rc = mode == 0   ? simplified(out, px, 0)
                         : mode == 1 ? simplified(out, px, 1)
                         : mode == 2 ? full(out, px, 1, -1, PNG_ALL_FILTERS)
                         : mode == 3 ? full(out, px, 6, -1, PNG_ALL_FILTERS)
                         : mode == 4 ? full(out, px, 6, Z_RLE, PNG_FILTER_PAETH)
                                     : full(out, px, 6, Z_RLE, PNG_ALL_FILTERS);
                t[r] = now() - t0;
                if (rc != 0) {
                    fprintf(stderr, "%s failed\n", names[mode]);
                    return 1;
                }
            }
            qsort(t, RUNS, sizeof t[0], compare);
            printf("  %-40s %7.2f ms %9ld B\n", names[mode], t[RUNS / 2] * 1000, file_size(out));
        }
    }
    remove(out);
    free(px);
    return 0;
}
