/*
 * stress — concurrent progress_update() on one engine, checked exactly afterwards.
 *
 * Two variants, each on a fresh engine with T tasks ("image_generation", primed into their main
 * stage) and T writer threads making N progress_update() calls each, step k+1 on call k:
 *   own     thread i always updates task i;
 *   shared  thread i's call k updates task (i + k) % T, so every task is hammered by every thread.
 * Two reader threads call progress_task_get() on every task meanwhile and check that each task's
 * "seq" never goes backwards and its status stays "executing".
 *
 * Afterwards, per task:
 *   - "seq" advanced by exactly the number of calls made to that task (each accepted update is one
 *     event: nothing lost, nothing counted twice);
 *   - the main stage's "progress" is exactly step / total_steps of a step that may legitimately be
 *     the last one applied: own — the final step of its thread; shared — the final step one of the
 *     threads sent to that task (each thread's calls are ordered, the threads' are not);
 * and the engine's "updates" counter advanced by T x N with no "invalid_updates".
 * total_steps is a power of two so step / total_steps is exact in binary and in the JSON.
 *
 * Usage: stress [threads] [calls]   (default 8 threads x 10000 calls)
 * Exit status 0 when every check passed; 1 with one line per failed check otherwise.
 */
#define _POSIX_C_SOURCE 200809L

#include <progress.h>

#include "json_scan.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64
#define READERS 2

static int failures; /* failed checks of the main thread; worker threads count theirs in run.errors */

static void __attribute__((format(printf, 3, 4))) fail(const char *variant, const char *subject, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL [%s] %s: ", variant, subject);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    failures++;
}

/* ---- Minimal JSON reading: json_scan.h, and ---------------------------------------------------- */

static int json_string_is(const char *obj, const char *key, const char *want)
{
    const char *v = json_member(obj, key);
    size_t len = strlen(want);
    return v && v[0] == '"' && strncmp(v + 1, want, len) == 0 && v[1 + len] == '"';
}

/* ---- The run ---------------------------------------------------------------------------------- */

struct run {
    const char *variant;
    int shared;
    int threads;
    long long calls;
    long long total_steps;
    progress_engine *engine;
    char task_ids[MAX_THREADS][32];
    pthread_barrier_t start;
    atomic_int writers_done;
    atomic_int errors; /* failed checks in writer and reader threads; only the first 5 are printed */
};

struct writer {
    pthread_t thread;
    struct run *run;
    int index;
};

static int task_of(const struct run *r, int thread, long long call)
{
    return r->shared ? (int)((thread + call) % r->threads) : thread;
}

static void *write_updates(void *arg)
{
    struct writer *w = arg;
    struct run *r = w->run;
    pthread_barrier_wait(&r->start);
    for (long long k = 0; k < r->calls; k++) {
        const char *id = r->task_ids[task_of(r, w->index, k)];
        progress_status st = progress_update(r->engine, id, k + 1, r->total_steps, NULL);
        if (st != PROGRESS_OK && atomic_fetch_add(&r->errors, 1) < 5)
            printf("FAIL [%s] %s: progress_update(step %lld) = %s: %s\n", r->variant, id, k + 1,
                   progress_status_string(st), progress_last_error());
    }
    return NULL;
}

static void *read_tasks(void *arg)
{
    struct run *r = arg;
    long long last_seq[MAX_THREADS] = {0};
    long long reads = 0;
    pthread_barrier_wait(&r->start);
    while (!atomic_load(&r->writers_done)) {
        for (int t = 0; t < r->threads; t++, reads++) {
            char *json = NULL;
            progress_status st = progress_task_get(r->engine, r->task_ids[t], &json);
            long long seq = st == PROGRESS_OK ? json_int(json, "seq") : -1;
            int executing = st == PROGRESS_OK && json_string_is(json, "status", "executing");
            if ((seq < last_seq[t] || !executing) && atomic_fetch_add(&r->errors, 1) < 5)
                printf("FAIL [%s] %s: reader saw status %s, seq %lld after %lld: %s\n", r->variant,
                       r->task_ids[t], progress_status_string(st), seq, last_seq[t],
                       json ? json : progress_last_error());
            if (seq > last_seq[t])
                last_seq[t] = seq;
            progress_string_free(json);
        }
    }
    return (void *)(intptr_t)reads;
}

/* Reads a task's seq, current stage and that stage's progress. Returns 0 on success. */
static int task_state(struct run *r, int t, long long *seq, long long *stage, double *progress)
{
    char *json = NULL, key[24];
    progress_status st = progress_task_get(r->engine, r->task_ids[t], &json);
    if (st != PROGRESS_OK) {
        fail(r->variant, r->task_ids[t], "progress_task_get = %s: %s", progress_status_string(st),
             progress_last_error());
        return -1;
    }
    *seq = json_int(json, "seq");
    *stage = json_int(json, "current_stage");
    snprintf(key, sizeof key, "%lld", *stage);
    const char *p = json_member(json_member(json_member(json, "stages"), key), "progress");
    *progress = p ? strtod(p, NULL) : NAN;
    int ok = *seq >= 0 && *stage >= 0 && p;
    if (!ok)
        fail(r->variant, r->task_ids[t], "no seq, current_stage or stage progress in %s", json);
    progress_string_free(json);
    return ok ? 0 : -1;
}

static long long engine_counter(struct run *r, const char *key)
{
    char *json = NULL;
    progress_status st = progress_engine_stats(r->engine, &json);
    long long n = st == PROGRESS_OK ? json_int(json, key) : -1;
    if (n < 0)
        fail(r->variant, "progress_engine_stats", "no \"%s\" (%s: %s)", key, progress_status_string(st),
             json ? json : progress_last_error());
    progress_string_free(json);
    return n;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void run_variant(const char *variant, int shared, int threads, long long calls)
{
    static struct run r; /* large (task ids); one variant at a time */
    struct writer writers[MAX_THREADS];
    pthread_t readers[READERS];
    long long seq0[MAX_THREADS], stage0[MAX_THREADS], expected_calls[MAX_THREADS] = {0};
    /* last_step[i][t]: the last step thread i sends to task t (0: none). */
    static long long last_step[MAX_THREADS][MAX_THREADS];
    long long reads = 0;
    int failures_before = failures;

    memset(&r, 0, sizeof r);
    memset(last_step, 0, sizeof last_step);
    r.variant = variant;
    r.shared = shared;
    r.threads = threads;
    r.calls = calls;
    for (r.total_steps = 1; r.total_steps < calls; r.total_steps *= 2)
        ;

    /* Resource sampling would add its own events (and seq) to executing tasks mid-run; the checks count
     * exactly the updates sent, so it is pushed past the run. */
    progress_status st = progress_engine_open("{\"resource_interval_ms\": 3600000}", &r.engine);
    if (st != PROGRESS_OK) {
        fail(variant, "progress_engine_open", "%s: %s", progress_status_string(st), progress_last_error());
        return;
    }
    for (int t = 0; t < threads; t++) {
        double progress;
        snprintf(r.task_ids[t], sizeof r.task_ids[t], "stress-%s-%d", variant, t);
        st = progress_task_create(r.engine, r.task_ids[t], "stress", "image_generation", NULL);
        if (st == PROGRESS_OK) /* step 0 moves the task to its main stage before the clock starts */
            st = progress_update(r.engine, r.task_ids[t], 0, r.total_steps, NULL);
        if (st != PROGRESS_OK)
            fail(variant, r.task_ids[t], "setting up: %s: %s", progress_status_string(st), progress_last_error());
        if (st != PROGRESS_OK || task_state(&r, t, &seq0[t], &stage0[t], &progress) != 0) {
            progress_engine_close(r.engine);
            return;
        }
    }
    for (int i = 0; i < threads; i++)
        for (long long k = 0; k < calls; k++) {
            expected_calls[task_of(&r, i, k)]++;
            last_step[i][task_of(&r, i, k)] = k + 1;
        }
    long long updates0 = engine_counter(&r, "updates");
    long long invalid0 = engine_counter(&r, "invalid_updates");

    pthread_barrier_init(&r.start, NULL, (unsigned)(threads + READERS));
    for (int j = 0; j < READERS; j++)
        pthread_create(&readers[j], NULL, read_tasks, &r);
    for (int i = 0; i < threads; i++) {
        writers[i] = (struct writer){.run = &r, .index = i};
        pthread_create(&writers[i].thread, NULL, write_updates, &writers[i]);
    }
    double t0 = now_seconds();
    for (int i = 0; i < threads; i++)
        pthread_join(writers[i].thread, NULL);
    double elapsed = now_seconds() - t0;
    atomic_store(&r.writers_done, 1);
    for (int j = 0; j < READERS; j++) {
        void *n;
        pthread_join(readers[j], &n);
        reads += (long long)(intptr_t)n;
    }
    pthread_barrier_destroy(&r.start);
    failures += atomic_load(&r.errors);

    for (int t = 0; t < threads; t++) {
        long long seq, stage;
        double progress;
        if (task_state(&r, t, &seq, &stage, &progress) != 0)
            continue;
        if (seq - seq0[t] != expected_calls[t])
            fail(variant, r.task_ids[t], "seq advanced by %lld, expected %lld (one per accepted update)",
                 seq - seq0[t], expected_calls[t]);
        if (stage != stage0[t])
            fail(variant, r.task_ids[t], "current_stage moved from %lld to %lld", stage0[t], stage);
        long long step = llround(progress * (double)r.total_steps);
        int legitimate = 0;
        for (int i = 0; i < threads; i++)
            legitimate |= last_step[i][t] != 0 && last_step[i][t] == step;
        if (!legitimate || progress != (double)step / (double)r.total_steps)
            fail(variant, r.task_ids[t], "stage progress is %.17g, not the final step / %lld of any thread", progress,
                 r.total_steps);
    }
    long long updates = engine_counter(&r, "updates") - updates0;
    long long invalid = engine_counter(&r, "invalid_updates") - invalid0;
    if (updates != (long long)threads * calls || invalid != 0)
        fail(variant, "progress_engine_stats", "%lld updates and %lld invalid ones counted, expected %lld and 0",
             updates, invalid, (long long)threads * calls);

    printf("%s [%s] %d threads x %lld updates (%.0f ns per update per thread), %lld concurrent reads\n",
           failures == failures_before ? "ok  " : "FAIL", variant, threads, calls,
           elapsed * 1e9 / (double)calls, reads);
    progress_engine_close(r.engine);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 8;
    long long calls = argc > 2 ? atoll(argv[2]) : 10000;
    if (threads < 1 || threads > MAX_THREADS || calls < 1) {
        fprintf(stderr, "usage: %s [threads 1..%d] [calls >= 1]\n", argv[0], MAX_THREADS);
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    run_variant("own", 0, threads, calls);
    run_variant("shared", 1, threads, calls);

    if (failures) {
        printf("stress: FAILED (%d failed checks)\n", failures);
        return 1;
    }
    printf("stress: all checks passed\n");
    return 0;
}
