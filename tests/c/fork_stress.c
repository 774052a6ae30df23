/*
 * fork_stress — fork() while other threads are inside progress_update(); both sides go on with the engine.
 *
 * One engine with a listener and Redis write-through (namespace of the run's own). U updater threads call
 * progress_update() on their own task without pause (step k+1 on call k); meanwhile the main thread forks F
 * children one after another. Each child, with a second thread of its own updating a second task:
 *   - has no listener (progress_engine_port -1) and none of the parent's tasks ("tasks" in stats is 0);
 *   - creates its tasks, updates them, logs, completes them, reads them back (completed, seq as counted);
 *   - closes the engine (which flushes its Redis writes) and sends each task's final seq to the parent.
 * The parent waits for every child (exit status 0), stops its updaters and checks:
 *   - each of its tasks' "seq" advanced by exactly the calls made (a fork lost or doubled none of them);
 *   - every child task reads back through the parent's engine (from Redis or the listener's mirror) as
 *     completed with the child's final seq: the children's writes reached Redis under their own engine id;
 *   - its listener still answers (progress_engine_port unchanged).
 *
 * Usage: fork_stress REDIS_PORT [forks] [updaters]   (default 4 forks, 2 updaters)
 * Exit status 0 when every check passed; 1 with one line per failed check otherwise.
 */
#define _GNU_SOURCE

#include <progress.h>

#include "json_scan.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_UPDATERS 16
#define CHILD_STEPS 200
#define TOTAL_STEPS (1LL << 40)

static int failures;

static void __attribute__((format(printf, 2, 3))) fail(const char *who, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL [%s] ", who);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    failures++;
}

static char *task_json(progress_engine *e, const char *id)
{
    char *json = NULL;
    if (progress_task_get(e, id, &json) != PROGRESS_OK)
        return NULL;
    return json;
}

static int status_is(const char *json, const char *want)
{
    const char *v = json_member(json, "status");
    size_t n = strlen(want);
    return v && v[0] == '"' && strncmp(v + 1, want, n) == 0 && v[1 + n] == '"';
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- The parent's updaters -------------------------------------------------------------------- */

struct updater {
    pthread_t thread;
    progress_engine *engine;
    char task_id[32];
    long long calls;
    atomic_int *stop;
};

static void *update_loop(void *arg)
{
    struct updater *u = arg;
    while (!atomic_load(u->stop)) {
        if (progress_update(u->engine, u->task_id, u->calls + 1, TOTAL_STEPS, NULL) != PROGRESS_OK) {
            fail(u->task_id, "progress_update: %s", progress_last_error());
            break;
        }
        u->calls++;
    }
    return NULL;
}

/* ---- A child ---------------------------------------------------------------------------------- */

struct child_task {
    progress_engine *engine;
    char id[48];
    long long seq;
    int ok;
};

static void *run_child_task(void *arg)
{
    struct child_task *t = arg;
    t->ok = 0;
    if (progress_task_create(t->engine, t->id, "forked", "image_generation", NULL) != PROGRESS_OK) {
        fail(t->id, "create in the child: %s", progress_last_error());
        return NULL;
    }
    for (long long k = 1; k <= CHILD_STEPS; k++) {
        if (progress_update(t->engine, t->id, k, CHILD_STEPS, NULL) != PROGRESS_OK) {
            fail(t->id, "update %lld in the child: %s", k, progress_last_error());
            return NULL;
        }
    }
    if (progress_log(t->engine, t->id, PROGRESS_LOG_INFO, "child done") != PROGRESS_OK ||
        progress_task_complete(t->engine, t->id) != PROGRESS_OK) {
        fail(t->id, "log / complete in the child: %s", progress_last_error());
        return NULL;
    }
    char *json = task_json(t->engine, t->id);
    if (!json || !status_is(json, "completed")) {
        fail(t->id, "read back in the child: %.200s", json ? json : progress_last_error());
    } else {
        t->seq = json_int(json, "seq");
        t->ok = 1;
    }
    progress_string_free(json);
    return NULL;
}

/* Runs in the child; returns its exit status. Writes "ID SEQ\n" per task to fd `out`. */
static int child_main(progress_engine *engine, int index, int out)
{
    if (progress_engine_port(engine) != -1)
        fail("child", "progress_engine_port is %d, want -1 (a child has no listener)", progress_engine_port(engine));
    char *stats = NULL;
    if (progress_engine_stats(engine, &stats) != PROGRESS_OK || json_int(stats, "tasks") != 0)
        fail("child", "stats right after the fork: %s (want \"tasks\":0)", stats ? stats : progress_last_error());
    progress_string_free(stats);

    struct child_task tasks[2];
    for (int i = 0; i < 2; i++) {
        tasks[i].engine = engine;
        snprintf(tasks[i].id, sizeof tasks[i].id, "fork-%d-child-%d-%d", (int)getppid(), index, i);
    }
    pthread_t second;
    if (pthread_create(&second, NULL, run_child_task, &tasks[1]) != 0) {
        fail("child", "pthread_create");
        return 1;
    }
    run_child_task(&tasks[0]);
    pthread_join(second, NULL);
    progress_engine_close(engine); /* flushes the child's writes */
    char line[128];
    for (int i = 0; i < 2; i++) {
        if (!tasks[i].ok)
            continue;
        int n = snprintf(line, sizeof line, "%s %lld\n", tasks[i].id, tasks[i].seq);
        if (write(out, line, (size_t)n) != n)
            fail("child", "write to the parent");
    }
    return failures ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fork_stress REDIS_PORT [forks] [updaters]\n");
        return 2;
    }
    int forks = argc > 2 ? atoi(argv[2]) : 4;
    int updaters = argc > 3 ? atoi(argv[3]) : 2;
    if (forks < 1 || updaters < 1 || updaters > MAX_UPDATERS) {
        fprintf(stderr, "fork_stress: forks >= 1, 1 <= updaters <= %d\n", MAX_UPDATERS);
        return 2;
    }
    char config[320];
    snprintf(config, sizeof config,
             "{\"listen\": \"127.0.0.1:0\", \"redis_url\": \"redis://127.0.0.1:%s/0\", \"namespace\": \"fork%d\","
             " \"throttle_ms\": 5, \"resource_interval_ms\": 3600000}", /* no samples: seq counts updates */
             argv[1], (int)getpid());
    progress_engine *engine = NULL;
    if (progress_engine_open(config, &engine) != PROGRESS_OK) {
        fprintf(stderr, "fork_stress: progress_engine_open: %s\n", progress_last_error());
        return 1;
    }
    int port = progress_engine_port(engine);

    atomic_int stop = 0;
    struct updater u[MAX_UPDATERS];
    long long seq_at_start[MAX_UPDATERS];
    for (int i = 0; i < updaters; i++) {
        u[i] = (struct updater){.engine = engine, .stop = &stop};
        snprintf(u[i].task_id, sizeof u[i].task_id, "parent-%d", i);
        if (progress_task_create(engine, u[i].task_id, "forked", "image_generation", NULL) != PROGRESS_OK ||
            progress_update(engine, u[i].task_id, 0, TOTAL_STEPS, NULL) != PROGRESS_OK) {
            fprintf(stderr, "fork_stress: create %s: %s\n", u[i].task_id, progress_last_error());
            return 1;
        }
        char *json = task_json(engine, u[i].task_id);
        seq_at_start[i] = json ? json_int(json, "seq") : -1;
        progress_string_free(json);
        pthread_create(&u[i].thread, NULL, update_loop, &u[i]);
    }

    /* Forks come once the engine runs: its threads' first round is where Swift's runtime sets its lazy caches
     * up, which a fork in the middle of would leave half-done in the child (docs/THREADING.md, "Swift's runtime"). */
    for (int tries = 0; tries < 500; tries++) {
        char *stats = NULL;
        int connected = progress_engine_stats(engine, &stats) == PROGRESS_OK && json_int(stats, "redis_connected") == 1;
        progress_string_free(stats);
        if (connected)
            break;
        sleep_ms(10);
    }
    sleep_ms(100);

    int pipes[2];
    if (pipe(pipes) != 0) {
        perror("pipe");
        return 1;
    }
    for (int f = 0; f < forks; f++) {
        sleep_ms(20 + f * 7); /* land the forks at different points of the updaters' calls */
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            close(pipes[0]);
            _exit(child_main(engine, f, pipes[1]));
        }
        int status = 0;
        /* The parent's updaters run on while the child works. */
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail("parent", "child %d ended with status 0x%x", f, status);
    }
    close(pipes[1]);

    atomic_store(&stop, 1);
    for (int i = 0; i < updaters; i++) {
        pthread_join(u[i].thread, NULL);
        char *json = task_json(engine, u[i].task_id);
        long long seq = json ? json_int(json, "seq") : -1;
        if (seq - seq_at_start[i] != u[i].calls)
            fail(u[i].task_id, "seq advanced by %lld, calls made %lld", seq - seq_at_start[i], u[i].calls);
        progress_string_free(json);
    }

    /* The children's tasks, read through the parent's engine: they are not held here, so they come from
     * Redis (or this engine's mirror of the update channel). */
    FILE *in = fdopen(pipes[0], "r");
    char id[64];
    long long want;
    int read_back = 0;
    while (in && fscanf(in, "%63s %lld", id, &want) == 2) {
        long long seq = -1;
        char *json = NULL;
        for (int tries = 0; tries < 200 && seq != want; tries++) {
            progress_string_free(json);
            json = task_json(engine, id);
            seq = json ? json_int(json, "seq") : -1;
            if (seq != want)
                sleep_ms(10);
        }
        if (seq != want || !status_is(json, "completed"))
            fail(id, "via the parent: seq %lld (want %lld): %.200s", seq, want, json ? json : progress_last_error());
        progress_string_free(json);
        read_back++;
    }
    if (in)
        fclose(in);
    if (read_back != 2 * forks)
        fail("parent", "%d child tasks reported, want %d", read_back, 2 * forks);
    if (progress_engine_port(engine) != port)
        fail("parent", "port %d after the forks, was %d", progress_engine_port(engine), port);
    progress_engine_close(engine);

    long long total = 0;
    for (int i = 0; i < updaters; i++)
        total += u[i].calls;
    printf("fork_stress: %d forks, %d child tasks read back, %lld parent updates across them, %s\n", forks,
           read_back, total, failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
