/*
 * errors — the error model of progress.h, one bad input at a time.
 *
 * Demonstrates:
 *   - every function returns a progress_status: PROGRESS_OK (0) or a negative, pinned code;
 *   - progress_status_string() names the code, progress_last_error() says what went wrong on this
 *     thread (the library owns that string: never free it);
 *   - bad input — NULL engine, NULL or empty or invalid ids, NaN, out-of-range numbers, malformed
 *     JSON, unknown tasks, updates to a finished task — is rejected with an error, never a crash,
 *     and the runner carries on;
 *   - progress_engine_open() sets *out to NULL on failure and progress_engine_close(NULL) is a no-op.
 *
 * Usage: ./errors
 * Each line: what was tried -> the status it returned: the library's message.
 * Exit status: 0 when every call returned the expected code, 1 otherwise.
 */
#define _POSIX_C_SOURCE 200809L

#include <progress.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define TASK_ID "errors-task"

static int mismatches;

static void expect(const char *what, progress_status got, progress_status want)
{
    if (got == PROGRESS_OK)
        printf("%-44s -> %s\n", what, progress_status_string(got));
    else
        printf("%-44s -> %s: %s\n", what, progress_status_string(got), progress_last_error());
    if (got != want) {
        printf("    ^ expected %s\n", progress_status_string(want));
        mismatches++;
    }
}

int main(void)
{
    progress_engine *engine = (progress_engine *)&mismatches; /* any non-NULL value: open must reset it */
    char long_id[258];
    char *json = NULL;

    expect("open with a misspelt config key \"listn\"", progress_engine_open("{\"listn\": \"127.0.0.1:0\"}", &engine),
           PROGRESS_E_CONFIG);
    printf("%-44s -> %s\n", "  ...and *out", engine == NULL ? "NULL" : "not NULL (a bug)");
    if (engine != NULL)
        mismatches++;
    expect("open with malformed config JSON", progress_engine_open("{\"throttle_ms\": ", &engine), PROGRESS_E_JSON);
    expect("open with a NULL out pointer", progress_engine_open(NULL, NULL), PROGRESS_E_INVALID_ARGUMENT);
    progress_engine_close(NULL); /* a no-op, like free(NULL) */

    progress_status st = progress_engine_open(NULL, &engine);
    if (st != PROGRESS_OK) {
        fprintf(stderr, "progress_engine_open: %s: %s\n", progress_status_string(st), progress_last_error());
        return 1;
    }
    expect("create the task", progress_task_create(engine, TASK_ID, "sdxl", "image_generation", NULL), PROGRESS_OK);

    /* Handles and ids. */
    expect("update with a NULL engine", progress_update(NULL, TASK_ID, 1, 10, NULL), PROGRESS_E_INVALID_ARGUMENT);
    expect("update with a NULL task id", progress_update(engine, NULL, 1, 10, NULL), PROGRESS_E_INVALID_ARGUMENT);
    expect("create with an empty task id", progress_task_create(engine, "", "sdxl", NULL, NULL),
           PROGRESS_E_INVALID_ARGUMENT);
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    expect("create with a 257-character task id", progress_task_create(engine, long_id, "sdxl", NULL, NULL),
           PROGRESS_E_INVALID_ARGUMENT);
    expect("create with a control character in the id", progress_task_create(engine, "bad\nid", "sdxl", NULL, NULL),
           PROGRESS_E_INVALID_ARGUMENT);
    expect("create with an id that is not UTF-8", progress_task_create(engine, "bad\xff\xfe", "sdxl", NULL, NULL),
           PROGRESS_E_INVALID_ARGUMENT);
    expect("create an id that exists", progress_task_create(engine, TASK_ID, "sdxl", NULL, NULL), PROGRESS_E_EXISTS);
    expect("  ...unless {\"resume\": true}", progress_task_create(engine, TASK_ID, "sdxl", NULL, "{\"resume\": true}"),
           PROGRESS_OK);
    expect("update an unknown task", progress_update(engine, "no-such-task", 1, 10, NULL), PROGRESS_E_NOT_FOUND);

    /* Numbers. */
    expect("stage progress NaN", progress_stage_update(engine, TASK_ID, 1, PROGRESS_STAGE_IN_PROGRESS, NAN, NULL),
           PROGRESS_E_RANGE);
    expect("stage progress 1.5", progress_stage_update(engine, TASK_ID, 1, PROGRESS_STAGE_IN_PROGRESS, 1.5, NULL),
           PROGRESS_E_RANGE);
    expect("stage index 99 of 4", progress_stage_update(engine, TASK_ID, 99, PROGRESS_STAGE_IN_PROGRESS, 0.5, NULL),
           PROGRESS_E_RANGE);
    expect("stage status PENDING (stages never go back)",
           progress_stage_update(engine, TASK_ID, 1, PROGRESS_STAGE_PENDING, 0.0, NULL), PROGRESS_E_INVALID_ARGUMENT);
    expect("stage status 42 (not in the enum)",
           progress_stage_update(engine, TASK_ID, 1, (progress_stage_status)42, 0.0, NULL),
           PROGRESS_E_INVALID_ARGUMENT);
    expect("step 11 of 10", progress_update(engine, TASK_ID, 11, 10, NULL), PROGRESS_E_RANGE);
    expect("total_steps 0", progress_update(engine, TASK_ID, 0, 0, NULL), PROGRESS_E_RANGE);
    expect("log level 7 (not in the enum)", progress_log(engine, TASK_ID, (progress_log_level)7, "hello"),
           PROGRESS_E_INVALID_ARGUMENT);

    /* JSON. */
    expect("options that are not JSON", progress_task_create(engine, "t2", "sdxl", NULL, "{quality: high}"),
           PROGRESS_E_JSON);
    expect("options with a wrongly typed value", progress_task_create(engine, "t2", "sdxl", NULL, "{\"quality\": 5}"),
           PROGRESS_E_JSON);
    expect("event data with step as a string",
           progress_event(engine, TASK_ID, "execution_progress", "{\"step\": \"ten\", \"total_steps\": 30}"),
           PROGRESS_E_JSON);
    expect("get with a NULL out pointer", progress_task_get(engine, TASK_ID, NULL), PROGRESS_E_INVALID_ARGUMENT);

    /* Nothing above changed the task: it takes a valid update as if nothing happened. */
    expect("a valid update after all that", progress_update(engine, TASK_ID, 5, 10, NULL), PROGRESS_OK);

    /* Finished tasks accept nothing more. */
    expect("complete the task", progress_task_complete(engine, TASK_ID), PROGRESS_OK);
    expect("update the completed task", progress_update(engine, TASK_ID, 6, 10, NULL), PROGRESS_E_STATE);
    expect("complete it again", progress_task_complete(engine, TASK_ID), PROGRESS_E_STATE);

    st = progress_task_get(engine, TASK_ID, &json);
    expect("get the task", st, PROGRESS_OK);
    if (st == PROGRESS_OK)
        printf("%s\n", json);
    progress_string_free(json);

    printf("progress_status_string(-99) = %s\n", progress_status_string((progress_status)-99));

    progress_engine_close(engine);
    if (mismatches)
        printf("%d call(s) returned an unexpected status\n", mismatches);
    return mismatches ? 1 : 0;
}
