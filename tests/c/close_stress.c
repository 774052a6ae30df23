/*
 * close_stress — progress_engine_close() while the engine's own threads are still changing tasks.
 *
 * Regression test of a use-after-free in close: the listener was stopped first, while the maintenance thread
 * (resource samples, step counters) and the preview thread (attaching finished previews) went on changing tasks;
 * each change wakes the listener with lws_cancel_service() on its libwebsockets context, which Listener.stop()
 * was destroying (or had freed). close now joins those threads before it stops the listener.
 *
 * The window is a few microseconds in a normal run, so this program widens it: it defines
 * lws_context_destroy() and lws_cancel_service() itself (the executable's definitions come first in symbol
 * lookup; the real ones are reached with dlsym(RTLD_NEXT)). Destroying a context is slowed down by 100 ms before
 * and after the real call, and a wake of a context being destroyed or destroyed is counted (and not passed on,
 * so the bug cannot crash the test). Each round opens an engine with a listener, a connected client, tasks
 * executing with resource sampling every 10 ms and a busy thread (so samples keep changing), step counters
 * attached, and large previews queued right before close.
 *
 * Usage: close_stress [rounds]   (default 3). Exit status 0 when no wake reached a dying context.
 * Link with -rdynamic (and -ldl on older C libraries) so the definitions below are the ones the library calls.
 */
#define _GNU_SOURCE

#include <progress.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct lws_context;

static _Atomic(struct lws_context *) dying; /* the context being destroyed, or destroyed */
static atomic_int dying_state;               /* 0 none, 1 being destroyed, 2 destroyed */
static atomic_int late_wakes[3];

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

void lws_context_destroy(struct lws_context *context)
{
    void (*real)(struct lws_context *) = (void (*)(struct lws_context *))dlsym(RTLD_NEXT, "lws_context_destroy");
    atomic_store(&dying, context);
    atomic_store(&dying_state, 1);
    sleep_ms(100);
    real(context);
    atomic_store(&dying_state, 2);
    sleep_ms(100); /* the caller still holds the freed pointer */
}

void lws_cancel_service(struct lws_context *context)
{
    void (*real)(struct lws_context *) = (void (*)(struct lws_context *))dlsym(RTLD_NEXT, "lws_cancel_service");
    int state = atomic_load(&dying_state);
    if (state != 0 && context == atomic_load(&dying)) {
        atomic_fetch_add(&late_wakes[state], 1);
        return;
    }
    real(context);
}

static atomic_int burning;

static void *burn(void *arg)
{
    (void)arg;
    volatile unsigned long x = 0;
    while (atomic_load(&burning))
        for (int i = 0; i < 100000; i++)
            x += (unsigned long)i;
    return NULL;
}

static int check(const char *what, progress_status st)
{
    if (st == PROGRESS_OK)
        return 0;
    printf("FAIL %s: %s: %s\n", what, progress_status_string(st), progress_last_error());
    return 1;
}

#define TASKS 16
#define W 512
#define H 512

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3, failures = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    static _Alignas(16) volatile long long counters[TASKS][2];
    unsigned char *pixels = malloc((size_t)W * H * 3);
    for (size_t k = 0; k < (size_t)W * H * 3; k++)
        pixels[k] = (unsigned char)(k * 13 >> 2);
    for (int round = 0; round < rounds; round++) {
        progress_engine *e = NULL;
        if (check("progress_engine_open",
                  progress_engine_open("{\"listen\":\"127.0.0.1:0\",\"resource_interval_ms\":10,\"throttle_ms\":1}", &e))) {
            failures++;
            break;
        }
        /* A client connection for close to close (a plain TCP connection is enough). */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)progress_engine_port(e))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
            printf("note: no client connection: %s\n", strerror(errno));
        char id[32];
        for (int t = 0; t < TASKS; t++) {
            snprintf(id, sizeof id, "close-%d-%d", round, t);
            failures += check("progress_task_create", progress_task_create(e, id, "close", "image_generation", NULL));
            /* Overall 20 % + 70 % x 60 / 100 = 62 %: the 25 and 50 % previews are due. */
            failures += check("progress_update", progress_update(e, id, 60, 100, NULL));
            if (t % 2 == 0) {
                counters[t][1] = 100;
                counters[t][0] = 60;
                failures += check("progress_task_attach_counter", progress_task_attach_counter(e, id, counters[t]));
            }
        }
        pthread_t burner;
        atomic_store(&burning, 1);
        pthread_create(&burner, NULL, burn, NULL);
        /* The listener takes every change (throttle 1 ms): what happens during close is new to it. */
        sleep_ms(100);
        for (int t = 0; t < TASKS; t++) {
            snprintf(id, sizeof id, "close-%d-%d", round, t);
            failures += check("progress_preview_pixels", progress_preview_pixels(e, id, pixels, W, H, W * 3, 3));
        }
        progress_engine_close(e);
        atomic_store(&burning, 0);
        pthread_join(burner, NULL);
        if (fd >= 0)
            close(fd);
        atomic_store(&dying_state, 0);
    }
    free(pixels);
    int late = atomic_load(&late_wakes[1]) + atomic_load(&late_wakes[2]);
    if (late) {
        printf("FAIL progress_engine_close: %d wake(s) of the listener's libwebsockets context while it was being "
               "destroyed and %d after it was freed (a thread still changing tasks after the listener stopped)\n",
               atomic_load(&late_wakes[1]), atomic_load(&late_wakes[2]));
        failures++;
    }
    if (failures) {
        printf("close_stress: FAILED (%d failed checks)\n", failures);
        return 1;
    }
    printf("close_stress: %d rounds, no wake of a dying listener context; all checks passed\n", rounds);
    return 0;
}
