/*
 * bench_update — the cost of progress_update() from C, as a sampling loop pays it.
 *
 * Side by side, in one run, calling through the linked library like any user (no dlsym):
 *   progress_version_number()   an exported function that only returns a constant: the price of any
 *                               call into the library, the floor under every other figure;
 *   progress_update, 1 thread   on an existing task in its main stage, no message;
 *   progress_update, 2 threads  two threads at once, each on its own task; the figure is the slower
 *                               thread's time per call, so contention between them shows;
 *   reference keyed update      reference_update.c: the least a keyed update costs in C (FNV-1a, a mutex,
 *                               clock_gettime, a compare, four stores, unlock), the limit progress_update is
 *                               measured against;
 *   progress_task_cancel_requested  the other call a sampling loop makes every step (a diffusers callback asks
 *                               whether to stop), on the same task: no target, printed for comparison.
 * Each figure is the median over RUNS runs of CALLS calls (ns per call, CLOCK_MONOTONIC).
 * Targets: progress_update median <= 100 ns per call; two threads <= 1.5 x one thread; progress_update <= 2.0 x
 * the reference keyed update (issue 18; moonshot 1.5 x).
 *
 * Usage: bench_update [runs] [calls]   (default 21 x 1000000)
 * Exit status 0 when both targets are met, 1 when one is missed or a call fails.
 */
#define _POSIX_C_SOURCE 200809L

#include <progress.h>

#include "reference_update.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_RUNS 1001
#define TARGET_NS 100.0
#define TARGET_TWO_THREAD_RATIO 1.5
#define TARGET_REFERENCE_RATIO 2.0
#define MOONSHOT_REFERENCE_RATIO 1.5

static int runs = 21;
static long long calls = 1000000;
static progress_engine *engine;
static volatile int sink; /* where the baseline's results go, so its calls cannot be dropped */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int n)
{
    qsort(values, (size_t)n, sizeof *values, by_value);
    return values[n / 2]; /* n is odd by default; for an even n the upper middle is close enough */
}

static void die(const char *what, progress_status st)
{
    fprintf(stderr, "%s: %s: %s\n", what, progress_status_string(st), progress_last_error());
    exit(1);
}

/* ns per call of one run of the empty-call baseline. */
static double run_baseline(void)
{
    int sum = 0;
    double t0 = now_ns();
    for (long long i = 0; i < calls; i++)
        sum += progress_version_number();
    double t1 = now_ns();
    sink = sum;
    return (t1 - t0) / (double)calls;
}

/* ns per call of one run of progress_update on task_id. The status is checked as a caller would. */
static double run_updates(const char *task_id)
{
    double t0 = now_ns();
    for (long long i = 1; i <= calls; i++) {
        progress_status st = progress_update(engine, task_id, i, calls, NULL);
        if (st != PROGRESS_OK)
            die("progress_update", st);
    }
    return (now_ns() - t0) / (double)calls;
}

/* ns per call of one run of progress_task_cancel_requested on task_id (no request stands: the answer is 0). */
static double run_cancel_checks(const char *task_id)
{
    int requested = 0, any = 0;
    double t0 = now_ns();
    for (long long i = 0; i < calls; i++) {
        progress_status st = progress_task_cancel_requested(engine, task_id, &requested);
        if (st != PROGRESS_OK)
            die("progress_task_cancel_requested", st);
        any |= requested;
    }
    double t1 = now_ns();
    sink = any;
    return (t1 - t0) / (double)calls;
}

/* ns per call of one run of the reference keyed update, on the same kind of task. */
static double run_reference(const char *task_id)
{
    double t0 = now_ns();
    for (long long i = 1; i <= calls; i++)
        if (reference_update(task_id, i, calls) != 0) {
            fprintf(stderr, "reference_update failed\n");
            exit(1);
        }
    return (now_ns() - t0) / (double)calls;
}

struct updater {
    pthread_t thread;
    const char *task_id;
    pthread_barrier_t *start; /* both threads start each run together */
    double ns[MAX_RUNS];
};

static void *update_runs(void *arg)
{
    struct updater *u = arg;
    for (int r = 0; r < runs; r++) {
        pthread_barrier_wait(u->start);
        u->ns[r] = run_updates(u->task_id);
    }
    return NULL;
}

static void create_task(const char *task_id)
{
    progress_status st = progress_task_create(engine, task_id, "bench", "image_generation", NULL);
    if (st != PROGRESS_OK)
        die("progress_task_create", st);
    /* Step 0 moves the task to its main stage now, so the timed calls all take the same path. */
    st = progress_update(engine, task_id, 0, calls, NULL);
    if (st != PROGRESS_OK)
        die("progress_update", st);
}

int main(int argc, char **argv)
{
    static double baseline[MAX_RUNS], one[MAX_RUNS], two[MAX_RUNS], reference[MAX_RUNS], cancel[MAX_RUNS];
    static struct updater updaters[2];
    pthread_barrier_t start;

    if (argc > 1)
        runs = atoi(argv[1]);
    if (argc > 2)
        calls = atoll(argv[2]);
    if (runs < 1 || runs > MAX_RUNS || calls < 1) {
        fprintf(stderr, "usage: %s [runs 1..%d] [calls >= 1]\n", argv[0], MAX_RUNS);
        return 1;
    }

    progress_status st = progress_engine_open(NULL, &engine);
    if (st != PROGRESS_OK)
        die("progress_engine_open", st);
    create_task("bench-1");
    create_task("bench-2");
    if (reference_create("bench-1") != 0) {
        fprintf(stderr, "reference_create failed\n");
        return 1;
    }

    /* Interleaved so drift of the machine (frequency, neighbours) hits both figures alike. */
    for (int r = 0; r < runs; r++) {
        baseline[r] = run_baseline();
        one[r] = run_updates("bench-1");
        reference[r] = run_reference("bench-1");
        cancel[r] = run_cancel_checks("bench-1");
    }

    pthread_barrier_init(&start, NULL, 2);
    updaters[0] = (struct updater){.task_id = "bench-1", .start = &start};
    updaters[1] = (struct updater){.task_id = "bench-2", .start = &start};
    for (int i = 0; i < 2; i++)
        if (pthread_create(&updaters[i].thread, NULL, update_runs, &updaters[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    for (int i = 0; i < 2; i++)
        pthread_join(updaters[i].thread, NULL);
    pthread_barrier_destroy(&start);
    for (int r = 0; r < runs; r++)
        two[r] = updaters[0].ns[r] > updaters[1].ns[r] ? updaters[0].ns[r] : updaters[1].ns[r];

    double base_ns = median(baseline, runs), one_ns = median(one, runs), two_ns = median(two, runs);
    double ref_ns = median(reference, runs), ratio = one_ns / ref_ns, cancel_ns = median(cancel, runs);
    int one_ok = one_ns <= TARGET_NS, two_ok = two_ns <= TARGET_TWO_THREAD_RATIO * one_ns;
    int ref_ok = ratio <= TARGET_REFERENCE_RATIO;

    printf("ProgressEngine %d, C hot path: median ns per call over %d runs of %lld calls\n",
           progress_version_number(), runs, calls);
    printf("  %-30s %8.1f ns   (empty-call baseline)\n", "progress_version_number()", base_ns);
    printf("  %-30s %8.1f ns   target <= %.0f ns: %s\n", "progress_update, 1 thread", one_ns, TARGET_NS,
           one_ok ? "met" : "MISSED");
    printf("  %-30s %8.1f ns   target <= %.1f x 1 thread = %.1f ns: %s\n", "progress_update, 2 threads", two_ns,
           TARGET_TWO_THREAD_RATIO, TARGET_TWO_THREAD_RATIO * one_ns, two_ok ? "met" : "MISSED");
    printf("  %-30s %8.1f ns   (the limit: reference_update.c)\n", "reference keyed update (C)", ref_ns);
    printf("  %-30s %8.2f x    target <= %.1f x: %s; moonshot <= %.1f x: %s\n", "progress_update / reference", ratio,
           TARGET_REFERENCE_RATIO, ref_ok ? "met" : "MISSED", MOONSHOT_REFERENCE_RATIO,
           ratio <= MOONSHOT_REFERENCE_RATIO ? "met" : "not yet");
    printf("  %-30s %8.1f ns   (the per-step cancel check; no target)\n", "progress_task_cancel_requested", cancel_ns);

    progress_engine_close(engine);
    return one_ok && two_ok && ref_ok ? 0 : 1;
}
