/*
 * bench_runner — a runner's sampling loop as the Redis benchmark measures it (driven by bench_redis.py).
 *
 * Opens an engine with CONFIG_JSON, creates TASKS tasks, then for SECONDS calls progress_update() round-robin
 * over them as fast as it can, timing every call (CLOCK_MONOTONIC). Prints one JSON line:
 *   {"calls", "rate" (calls/s), "p50_ns", "p99_ns", "max_ns", "stats_before", "stats_after"}
 * where stats_* are progress_engine_stats() before and after the loop (the Redis command counters).
 *
 * Usage: bench_runner CONFIG_JSON TASKS SECONDS
 */
#define _POSIX_C_SOURCE 200809L

#include <progress.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUCKETS 100000 /* 10 ns buckets up to 1 ms; slower calls go in the last one (and max_ns) */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long percentile(const long long *hist, long long total, double p) {
    long long want = (long long)(total * p), seen = 0;
    for (int i = 0; i < BUCKETS; i++) {
        seen += hist[i];
        if (seen > want) return i * 10LL;
    }
    return BUCKETS * 10LL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: bench_runner CONFIG_JSON TASKS SECONDS\n");
        return 2;
    }
    int tasks = atoi(argv[2]);
    double seconds = atof(argv[3]);
    progress_engine *engine = NULL;
    if (progress_engine_open(argv[1], &engine) != PROGRESS_OK) {
        fprintf(stderr, "open: %s\n", progress_last_error());
        return 1;
    }
    char ids[256][32];
    if (tasks < 1 || tasks > 256) return 2;
    for (int i = 0; i < tasks; i++) {
        snprintf(ids[i], sizeof ids[i], "bench-%d", i);
        if (progress_task_create(engine, ids[i], "bench", "image_generation", NULL) != PROGRESS_OK) return 1;
    }
    char *before = NULL, *after = NULL;
    progress_engine_stats(engine, &before);
    long long *hist = calloc(BUCKETS, sizeof *hist);
    long long calls = 0, max_ns = 0, total = 1LL << 40;
    double start = now_s(), end = start + seconds;
    while (now_s() < end) {
        for (int k = 0; k < 1000; k++) {
            int t = (int)(calls % tasks);
            long long t0 = now_ns();
            progress_update(engine, ids[t], calls / tasks % total + 1, total, NULL);
            long long d = now_ns() - t0;
            hist[d / 10 < BUCKETS ? d / 10 : BUCKETS - 1]++;
            if (d > max_ns) max_ns = d;
            calls++;
        }
    }
    double elapsed = now_s() - start;
    progress_engine_stats(engine, &after);
    printf("{\"calls\":%lld,\"seconds\":%.3f,\"rate\":%.0f,\"p50_ns\":%lld,\"p99_ns\":%lld,\"max_ns\":%lld,"
           "\"stats_before\":%s,\"stats_after\":%s}\n",
           calls, elapsed, calls / elapsed, percentile(hist, calls, 0.5), percentile(hist, calls, 0.99), max_ns,
           before, after);
    fflush(stdout);
    progress_string_free(before);
    progress_string_free(after);
    free(hist);
    progress_engine_close(engine);
    return 0;
}
