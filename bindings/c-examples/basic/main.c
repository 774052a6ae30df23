/*
 * basic — the life of one task, as C inference code reports it.
 *
 * Demonstrates:
 *   - checking that the header and the loaded library agree (progress_version_number());
 *   - opening an in-memory engine, creating an "image_generation" task (stages queue,
 *     model_loading, generation, post_processing);
 *   - walking the stages with progress_stage_update() and reporting sampling steps with
 *     progress_update(), the hot path of a diffusion loop;
 *   - writing to the task's log, completing it and printing its TaskProgress JSON;
 *   - checking every status and printing progress_last_error() on failure;
 *   - stopping cleanly on Ctrl-C: the task is cancelled, not left "executing".
 *
 * Usage: ./basic [steps]   (default 30 sampling steps, 10 ms each)
 */
#define _POSIX_C_SOURCE 200809L

#include <progress.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TASK_ID "basic-task-1"

/* Stage indices of the "image_generation" defaults. */
enum { STAGE_MODEL_LOADING = 1, STAGE_GENERATION = 2, STAGE_POST_PROCESSING = 3 };

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Every call returns a status; on failure the library explains why in progress_last_error(). */
#define CHECK(call)                                                                                \
    do {                                                                                           \
        progress_status st_ = (call);                                                              \
        if (st_ != PROGRESS_OK) {                                                                  \
            fprintf(stderr, "%s failed: %s: %s\n", #call, progress_status_string(st_),             \
                    progress_last_error());                                                        \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    long long steps = argc > 1 ? atoll(argv[1]) : 30;
    progress_engine *engine = NULL;
    char *json = NULL;
    int rc = 1;

    /* Line-buffered so progress shows at once even when stdout is a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (progress_version_number() != PROGRESS_VERSION_NUMBER) {
        fprintf(stderr, "header is version %d but the loaded library is %d\n", PROGRESS_VERSION_NUMBER,
                progress_version_number());
        return 1;
    }
    printf("ProgressEngine %d (header and library agree)\n", progress_version_number());
    if (steps < 1) {
        fprintf(stderr, "usage: %s [steps >= 1]\n", argv[0]);
        return 1;
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);

    /* NULL config: the defaults, in memory, no listener. */
    CHECK(progress_engine_open(NULL, &engine));
    CHECK(progress_task_create(engine, TASK_ID, "stable-diffusion-xl", "image_generation",
                               "{\"quality\": \"high\"}"));
    printf("created %s (status queued, stage 0 queue)\n", TASK_ID);

    CHECK(progress_stage_update(engine, TASK_ID, STAGE_MODEL_LOADING, PROGRESS_STAGE_IN_PROGRESS, 0.0,
                                "Loading UNet"));
    CHECK(progress_stage_update(engine, TASK_ID, STAGE_MODEL_LOADING, PROGRESS_STAGE_IN_PROGRESS, 0.5,
                                "Loading VAE"));
    CHECK(progress_stage_update(engine, TASK_ID, STAGE_MODEL_LOADING, PROGRESS_STAGE_COMPLETED, 1.0,
                                "Models loaded"));
    CHECK(progress_log(engine, TASK_ID, PROGRESS_LOG_INFO, "models loaded, sampling"));
    printf("stage 1 model_loading completed\n");

    CHECK(progress_stage_update(engine, TASK_ID, STAGE_GENERATION, PROGRESS_STAGE_IN_PROGRESS, 0.0,
                                "Sampling"));
    for (long long step = 1; step <= steps && !interrupted; step++) {
        sleep_ms(10); /* stands in for one denoising step */
        /* The message is copied only when it changes, so reporting it every step is cheap. */
        CHECK(progress_update(engine, TASK_ID, step, steps, "Sampling"));
        if (step % 10 == 0 || step == steps)
            printf("step %lld/%lld\n", step, steps);
    }

    if (interrupted) {
        CHECK(progress_task_cancel(engine, TASK_ID, "interrupted by SIGINT"));
        printf("interrupted: task cancelled\n");
    } else {
        CHECK(progress_stage_update(engine, TASK_ID, STAGE_POST_PROCESSING, PROGRESS_STAGE_IN_PROGRESS, 0.5,
                                    "Upscaling"));
        CHECK(progress_log(engine, TASK_ID, PROGRESS_LOG_INFO, "image written"));
        CHECK(progress_task_complete(engine, TASK_ID));
        printf("task completed\n");
    }

    CHECK(progress_task_get(engine, TASK_ID, &json));
    printf("task JSON:\n%s\n", json);
    rc = interrupted ? 130 : 0;

out:
    progress_string_free(json);
    progress_engine_close(engine);
    return rc;
}
