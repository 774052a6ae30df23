/*
 * What runner.c and floor_server.c share: the clock, the FATAL line, reading the template, and the fixed-load
 * schedule (python_server.py follows the same schedule in Python).
 */
#ifndef FANOUT_COMMON_H
#define FANOUT_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_TASKS 10000

static int64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Prints `FATAL {"error":"WHAT: DETAIL"}` (run.py raises it) and exits 2. */
static void fail(const char *what, const char *detail) {
    printf("FATAL {\"error\":\"%s: %s\"}\n", what, detail);
    fflush(stdout);
    exit(2);
}

/* A text file (the `runner dump` template) without its trailing newline. */
static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fail("open template", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    if (more) fail("template", "larger than 64 KiB");
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    buf[n] = 0;
    char *copy = strdup(buf);
    if (!copy) fail("memory", "out of memory");
    return copy;
}

/* The fixed load: each of `ntasks` tasks once every period, the updates evenly staggered over the period.
 * After a stall (a busy machine) the schedule catches up, but never updates a task sooner than 0.6 periods
 * after its previous update: a burst would otherwise run into the listener's throttle (updates within
 * throttle_ms of a task's last fan-out are held back by design). */
struct schedule {
    int64_t t0, end, period, slot, k;
    int ntasks;
    double late_ms; /* the longest the schedule fell behind */
    int64_t last[MAX_TASKS];
};

static void schedule_start(struct schedule *s, double seconds, int period_ms, int ntasks) {
    s->t0 = now_ns(CLOCK_MONOTONIC);
    s->end = s->t0 + (int64_t)(seconds * 1e9);
    s->period = (int64_t)period_ms * 1000000;
    s->slot = s->period / ntasks;
    s->k = 0;
    s->ntasks = ntasks;
    s->late_ms = 0;
    for (int i = 0; i < ntasks; i++) s->last[i] = INT64_MIN / 2;
}

/* The next update: its task and the CLOCK_MONOTONIC time it is due; 0 once the run is over. The caller
 * waits until `due`, updates the task and records when with schedule_done. */
static int schedule_next(struct schedule *s, int *task, int64_t *due) {
    int64_t at = s->t0 + s->k * s->slot;
    if (at >= s->end) return 0;
    int i = (int)(s->k % s->ntasks);
    int64_t now = now_ns(CLOCK_MONOTONIC);
    if (now >= at && (now - at) / 1e6 > s->late_ms) s->late_ms = (now - at) / 1e6;
    if (at < s->last[i] + s->period * 6 / 10) at = s->last[i] + s->period * 6 / 10;
    s->k++;
    *task = i;
    *due = at;
    return 1;
}

static void schedule_done(struct schedule *s, int task, int64_t at) { s->last[task] = at; }

#endif
