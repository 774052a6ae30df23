/*
 * runner — the update stream of the fan-out benchmark, in one of three modes:
 *
 *   runner engine THROTTLE_MS TASKS MAX_CONNECTIONS [MORE_CONFIG]
 *       (a) opens a ProgressEngine with {"listen":"127.0.0.1:0", throttle_ms, max_connections, MORE_CONFIG}
 *       (MORE_CONFIG: further members, e.g. "resource_interval_ms":3600000); its listener is the server
 *       under test, in this process. Creates TASKS tasks "task-%04d" (template category
 *       "image_generation", in the main stage) and drives them with
 *       progress_update(engine, id, step, 1000, "t=<CLOCK_REALTIME ns>").
 *   runner redis REDIS_PORT TASKS TEMPLATE_FILE
 *       (c) PUBLISHes to channel "task-%04d" of redis-server the same progress.update message our
 *       listener would send: {"type":"progress.update","task_id","seq","data":TaskProgress}, with
 *       TaskProgress taken from TEMPLATE_FILE (see dump) and its stage message set to "t=<ns>".
 *   runner dump
 *       prints the TaskProgress JSON of a task in its main stage with message "t=<19 digits>" (what
 *       python_server.py and the redis mode send, so every server sends payloads of the same size).
 *
 * Engine and redis modes print `READY {"port","pid","updater_tid"}` and obey lines on stdin:
 *   run SECONDS PERIOD_MS   PERIOD_MS > 0: fixed load, each task updated once every PERIOD_MS, the
 *                           updates of the TASKS tasks evenly staggered over the period (after a
 *                           stall, never sooner than 0.6 periods after the task's previous update);
 *                           PERIOD_MS = 0: saturation (engine: every task updated every millisecond,
 *                           far more than any listener can fan out, coalesced by the engine; redis:
 *                           rounds of TASKS pipelined PUBLISHes back to back).
 *                           Prints `DONE {"updates","receivers","wall_s","late_ms"}`
 *                           (late_ms: the longest the schedule fell behind).
 *   burst SECONDS PERIOD_MS the burst shape: every task updated at the same instants, one instant every
 *                           PERIOD_MS (engine: TASKS progress_update calls back to back; redis: TASKS
 *                           PUBLISHes pipelined, as one client of redis would send them). Prints DONE.
 *   quit
 * The updating thread is this process's main thread (tid = pid): the benchmark counts the server's CPU
 * without it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "fanout_common.h"
#include "progress.h"

#define STAMP_DIGITS 19
/* The envelope our listener sends: {"type":"progress.update","task_id","seq","data":TaskProgress}. */
#define PUBLISH_FORMAT "PUBLISH %s {\"type\":\"progress.update\",\"task_id\":\"%s\",\"seq\":%lld,\"data\":%s%lld%s}"

static int ntasks;
static progress_engine *engine;
static redisContext *redis;
static char **redis_prefix, **redis_suffix; /* per task: message around the "t=" stamp */
static long long seqs[MAX_TASKS];
static long long steps[MAX_TASKS];

static void check(progress_status st, const char *what) {
    if (st != PROGRESS_OK) fail(what, progress_last_error());
}

static void task_id(int i, char *buf) { snprintf(buf, 16, "task-%04d", i); }

/* One update of task i, stamped now. Returns the number of receivers (redis) or 0. */
static long long update(int i) {
    char id[16], msg[32];
    task_id(i, id);
    steps[i] = steps[i] % 999 + 1;
    int64_t t = now_ns(CLOCK_REALTIME);
    if (engine) {
        snprintf(msg, sizeof msg, "t=%lld", (long long)t);
        check(progress_update(engine, id, steps[i], 1000, msg), "progress_update");
        return 0;
    }
    seqs[i]++;
    redisReply *r = redisCommand(redis, PUBLISH_FORMAT, id, id, seqs[i], redis_prefix[i], (long long)t,
                                 redis_suffix[i]);
    if (r == NULL) fail("PUBLISH", redis->errstr);
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    return n;
}

static void sleep_until(int64_t mono_ns) {
    struct timespec ts = {.tv_sec = mono_ns / 1000000000, .tv_nsec = mono_ns % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* Every task's update PUBLISHed, pipelined, then the replies read. Returns the receivers counted. */
static long long publish_round(void) {
    char id[16];
    long long receivers = 0;
    for (int i = 0; i < ntasks; i++) {
        task_id(i, id);
        seqs[i]++;
        redisAppendCommand(redis, PUBLISH_FORMAT, id, id, seqs[i], redis_prefix[i], (long long)now_ns(CLOCK_REALTIME),
                           redis_suffix[i]);
    }
    for (int i = 0; i < ntasks; i++) {
        redisReply *r;
        if (redisGetReply(redis, (void **)&r) != REDIS_OK) fail("PUBLISH", redis->errstr);
        if (r->type == REDIS_REPLY_INTEGER) receivers += r->integer;
        freeReplyObject(r);
    }
    return receivers;
}

static void print_done(long long updates, long long receivers, int64_t t0, double late_ms) {
    printf("DONE {\"updates\":%lld,\"receivers\":%lld,\"wall_s\":%.6f,\"late_ms\":%.3f}\n", updates, receivers,
           (now_ns(CLOCK_MONOTONIC) - t0) / 1e9, late_ms);
    fflush(stdout);
}

static void run(double seconds, int period_ms) {
    int64_t t0 = now_ns(CLOCK_MONOTONIC), end = t0 + (int64_t)(seconds * 1e9);
    long long updates = 0, receivers = 0;
    double late_ms = 0;
    if (period_ms > 0) {
        static struct schedule sched;
        schedule_start(&sched, seconds, period_ms, ntasks);
        int i;
        int64_t due;
        while (schedule_next(&sched, &i, &due)) {
            if (now_ns(CLOCK_MONOTONIC) < due) sleep_until(due);
            schedule_done(&sched, i, now_ns(CLOCK_MONOTONIC));
            receivers += update(i);
            updates++;
        }
        late_ms = sched.late_ms;
    } else if (engine) {
        for (int64_t next = t0; next < end; next += 1000000) {
            for (int i = 0; i < ntasks; i++) update(i);
            updates += ntasks;
            sleep_until(next + 1000000);
        }
    } else {
        while (now_ns(CLOCK_MONOTONIC) < end) {
            receivers += publish_round();
            updates += ntasks;
        }
    }
    print_done(updates, receivers, t0, late_ms);
}

/* The burst shape: at t0 + k * period, every task once, back to back (redis: pipelined). */
static void burst(double seconds, int period_ms) {
    int64_t t0 = now_ns(CLOCK_MONOTONIC), end = t0 + (int64_t)(seconds * 1e9), period = (int64_t)period_ms * 1000000;
    long long updates = 0, receivers = 0;
    double late_ms = 0;
    for (int64_t at = t0; at < end; at += period) {
        int64_t now = now_ns(CLOCK_MONOTONIC);
        if (now < at) sleep_until(at);
        else if ((now - at) / 1e6 > late_ms) late_ms = (now - at) / 1e6;
        if (engine) {
            for (int i = 0; i < ntasks; i++) update(i);
        } else {
            receivers += publish_round();
        }
        updates += ntasks;
    }
    print_done(updates, receivers, t0, late_ms);
}

/* The TaskProgress JSON of a task in its main stage, message "t=" + STAMP_DIGITS digits. */
static char *sample_task_json(progress_engine *e, const char *id) {
    char *json = NULL;
    check(progress_task_create(e, id, "bench", "image_generation", NULL), "progress_task_create");
    check(progress_update(e, id, 10, 1000, "t=1700000000000000000"), "progress_update");
    check(progress_task_get(e, id, &json), "progress_task_get");
    return json;
}

/* Per task: the message up to "t=" (redis_prefix, with "%s" for the seq) and after the stamp's digits. */
static void redis_templates(const char *data) {
    const char *stamp = strstr(data, "\"t=1700000000000000000\"");
    const char *tid = strstr(data, "\"task_id\":\"task-0000\"");
    if (!stamp || !tid || tid > stamp) fail("template", "expected \"task_id\":\"task-0000\" then a \"t=...\" message");
    redis_prefix = calloc((size_t)ntasks, sizeof *redis_prefix);
    redis_suffix = calloc((size_t)ntasks, sizeof *redis_suffix);
    size_t head = (size_t)(stamp + 3 - data);
    for (int i = 0; i < ntasks; i++) {
        char id[16];
        task_id(i, id);
        char *pre = malloc(head + 1);
        memcpy(pre, data, head);
        pre[head] = 0;
        memcpy(pre + (tid - data) + 11, id, 9); /* data.task_id: ids have the template's length */
        redis_prefix[i] = pre;
        redis_suffix[i] = strdup(stamp + 3 + STAMP_DIGITS);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "dump") == 0) {
        progress_engine *e;
        check(progress_engine_open(NULL, &e), "progress_engine_open");
        char *json = sample_task_json(e, "task-0000");
        printf("%s\n", json);
        progress_string_free(json);
        progress_engine_close(e);
        return 0;
    }
    if (argc < 5 || argc > 6 || (strcmp(argv[1], "engine") != 0 && strcmp(argv[1], "redis") != 0)) {
        fprintf(stderr,
                "usage: %s engine THROTTLE_MS TASKS MAX_CONNECTIONS [MORE_CONFIG] | redis PORT TASKS TEMPLATE | dump\n",
                argv[0]);
        return 2;
    }
    ntasks = atoi(argv[3]);
    if (ntasks <= 0 || ntasks > MAX_TASKS) fail("arguments", "TASKS must be 1..10000");
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int port = -1;
    if (strcmp(argv[1], "engine") == 0) {
        int max_conn = atoi(argv[4]);
        if ((long long)rl.rlim_cur < (long long)max_conn + 256) {
            char why[128];
            snprintf(why, sizeof why, "RLIMIT_NOFILE hard limit %llu < max_connections %d + 256",
                     (unsigned long long)rl.rlim_max, max_conn);
            fail("rlimit", why);
        }
        char config[512];
        snprintf(config, sizeof config, "{\"listen\":\"127.0.0.1:0\",\"throttle_ms\":%d,\"max_connections\":%d%s%s}",
                 atoi(argv[2]), max_conn, argc == 6 ? "," : "", argc == 6 ? argv[5] : "");
        check(progress_engine_open(config, &engine), "progress_engine_open");
        port = progress_engine_port(engine);
        for (int i = 0; i < ntasks; i++) {
            char id[16];
            task_id(i, id);
            check(progress_task_create(engine, id, "bench", "image_generation", NULL), "progress_task_create");
            check(progress_update(engine, id, 0, 1000, "t=0"), "progress_update");
        }
    } else {
        port = atoi(argv[2]);
        char *data = read_file(argv[4]);
        redis_templates(data);
        struct timeval tv = {5, 0};
        redis = redisConnectWithTimeout("127.0.0.1", port, tv);
        if (redis == NULL || redis->err) fail("redis connect", redis ? redis->errstr : "out of memory");
    }
    /* The updating thread (this one) is the runner, not the server: the benchmark leaves its CPU out. */
    printf("READY {\"port\":%d,\"pid\":%d,\"updater_tid\":%d}\n", port, (int)getpid(), (int)gettid());

    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        double seconds;
        int period;
        if (sscanf(line, "run %lf %d", &seconds, &period) == 2 && seconds > 0 && seconds <= 600 && period >= 0) {
            run(seconds, period);
        } else if (sscanf(line, "burst %lf %d", &seconds, &period) == 2 && seconds > 0 && seconds <= 600 &&
                   period > 0) {
            burst(seconds, period);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            printf("ERROR {\"line\":\"bad command\"}\n");
        }
    }
    if (engine) progress_engine_close(engine);
    if (redis) redisFree(redis);
    return 0;
}
