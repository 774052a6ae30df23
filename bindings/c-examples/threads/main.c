/*
 * threads — many sampling loops in one process, one engine shared by all of them.
 *
 * Demonstrates:
 *   - one engine used concurrently from N threads without any locking on the caller's side
 *     (every function of progress.h may be called from any thread);
 *   - each thread creating, reporting (progress_update) and completing its own task;
 *   - progress_last_error() being per thread: a thread reads the message of its own failed call;
 *   - reading the final state back with progress_task_get() and checking it;
 *   - Ctrl-C: every thread cancels its task and stops; the program then exits non-zero.
 *
 * Usage: ./threads [threads] [steps]   (default 8 threads, 2000 steps each)
 * Exit status: 0 when every task ended "completed" at 100 %, 1 otherwise.
 */
#define _POSIX_C_SOURCE 200809L

#include <progress.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 256

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct worker {
    pthread_t thread;
    progress_engine *engine;
    char task_id[32];
    long long steps;
    int failed;
};

static int report(struct worker *w, const char *what, progress_status st)
{
    if (st == PROGRESS_OK)
        return 0;
    fprintf(stderr, "%s: %s failed: %s: %s\n", w->task_id, what, progress_status_string(st),
            progress_last_error());
    w->failed = 1;
    return -1;
}

static void *run_worker(void *arg)
{
    struct worker *w = arg;

    if (report(w, "progress_task_create",
               progress_task_create(w->engine, w->task_id, "stable-diffusion-xl", "image_generation", NULL)))
        return NULL;
    /* The first step moves the task straight to its main stage ("generation"). */
    for (long long step = 1; step <= w->steps && !interrupted; step++)
        if (report(w, "progress_update", progress_update(w->engine, w->task_id, step, w->steps, NULL)))
            return NULL;
    if (interrupted)
        report(w, "progress_task_cancel", progress_task_cancel(w->engine, w->task_id, "interrupted"));
    else
        report(w, "progress_task_complete", progress_task_complete(w->engine, w->task_id));
    return NULL;
}

/*
 * The value of `key` among the top-level members of a JSON object, or NULL. It walks only the top
 * level on purpose: every stage object has a "status" too. Just enough JSON for this example; real
 * programs would use their JSON library.
 */
static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

static const char *skip_string(const char *p) /* p at the opening quote */
{
    for (p++; *p && *p != '"'; p++)
        if (*p == '\\' && p[1])
            p++;
    return *p ? p + 1 : NULL;
}

static const char *skip_value(const char *p)
{
    int depth = 0;
    do {
        p = skip_ws(p);
        if (*p == '"') {
            if (!(p = skip_string(p)))
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        else if (depth == 0) { /* number, true, false, null */
            while (*p && *p != ',' && *p != '}' && *p != ']')
                p++;
            return p;
        }
        if (!*p)
            return NULL;
        p++;
    } while (depth > 0);
    return p;
}

static const char *json_member(const char *json, const char *key)
{
    size_t len = strlen(key);
    const char *p = skip_ws(json);
    if (*p++ != '{')
        return NULL;
    for (;;) {
        p = skip_ws(p);
        if (*p != '"')
            return NULL;
        const char *name = p + 1, *end = skip_string(p);
        if (!end)
            return NULL;
        p = skip_ws(end);
        if (*p++ != ':')
            return NULL;
        p = skip_ws(p);
        if ((size_t)(end - 1 - name) == len && memcmp(name, key, len) == 0)
            return p;
        if (!(p = skip_value(p)))
            return NULL;
        p = skip_ws(p);
        if (*p++ != ',')
            return NULL;
    }
}

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 8;
    long long steps = argc > 2 ? atoll(argv[2]) : 2000;
    static struct worker workers[MAX_THREADS];
    progress_engine *engine = NULL;
    int rc = 0;

    if (nthreads < 1 || nthreads > MAX_THREADS || steps < 1) {
        fprintf(stderr, "usage: %s [threads 1..%d] [steps >= 1]\n", argv[0], MAX_THREADS);
        return 1;
    }

    /* Line-buffered so the lines show at once even when stdout is a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);

    progress_status st = progress_engine_open(NULL, &engine);
    if (st != PROGRESS_OK) {
        fprintf(stderr, "progress_engine_open: %s: %s\n", progress_status_string(st), progress_last_error());
        return 1;
    }

    for (int i = 0; i < nthreads; i++) {
        workers[i].engine = engine;
        workers[i].steps = steps;
        snprintf(workers[i].task_id, sizeof workers[i].task_id, "thread-task-%d", i);
        if (pthread_create(&workers[i].thread, NULL, run_worker, &workers[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            nthreads = i; /* join the ones already running, then fail */
            rc = 1;
            break;
        }
    }
    printf("%d threads reporting %lld steps each (Ctrl-C stops them)\n", nthreads, steps);
    for (int i = 0; i < nthreads; i++)
        pthread_join(workers[i].thread, NULL);

    /* Only now that every thread has returned may the engine be read for the summary and closed. */
    for (int i = 0; i < nthreads; i++) {
        char *json = NULL;
        st = progress_task_get(engine, workers[i].task_id, &json);
        if (st != PROGRESS_OK) {
            fprintf(stderr, "%s: progress_task_get: %s: %s\n", workers[i].task_id, progress_status_string(st),
                    progress_last_error());
            rc = 1;
            continue;
        }
        const char *status = json_member(json, "status");
        const char *overall = json_member(json, "overall_progress");
        double percent = overall ? strtod(overall, NULL) : -1.0;
        int status_len = status && *status == '"' ? (int)strcspn(status + 1, "\"") : 0;
        int done = !workers[i].failed && status_len == 9 && strncmp(status + 1, "completed", 9) == 0 &&
                   percent == 100.0;
        printf("%-16s overall_progress %6.2f%%  status %.*s%s\n", workers[i].task_id, percent, status_len,
               status_len ? status + 1 : "", done ? "" : "  <- not in its final state");
        if (!done)
            rc = 1;
        progress_string_free(json);
    }

    progress_engine_close(engine);
    return rc;
}
