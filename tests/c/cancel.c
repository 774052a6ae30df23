/*
 * cancel — progress_task_cancel_requested as a C runner uses it.
 *
 * One engine with a listener on a free port: a task whose sampling loop asks progress_task_cancel_requested every
 * step, a cancel request sent to the engine's own REST API (POST /api/v1/progress/tasks/{id}/cancel over a plain
 * socket, served by the listener thread) part-way through, and the runner's answer, progress_task_cancel. Checks:
 *   - 0 before the request, 1 from the step after it (the 202 comes once it is recorded), 0 once cancelled;
 *   - the task's JSON: "cancel_requested" and "cancel_reason" while it stands, status "cancelled" after;
 *   - errors: NULL requested, NULL or invalid task_id (PROGRESS_E_INVALID_ARGUMENT), an unknown task
 *     (PROGRESS_E_NOT_FOUND), each with *requested 0 and a message; a finished task answers 0;
 *   - a second request for the cancelled task is refused with 409.
 *
 * Usage: cancel. Exit status 0 when every check passed; 1 with one line per failed check otherwise.
 */
#define _POSIX_C_SOURCE 200809L

#include <progress.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                 \
    do {                                                 \
        if (!(cond)) {                                   \
            failures++;                                  \
            fprintf(stderr, "FAILED line %d: ", __LINE__); \
            fprintf(stderr, __VA_ARGS__);                \
            fputc('\n', stderr);                         \
        }                                                \
    } while (0)

/* POSTs `body` to the task's cancel route; returns the HTTP status, or -1. */
static int post_cancel(int port, const char *task_id, const char *body) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    char request[1024];
    int n = snprintf(request, sizeof request,
                     "POST /api/v1/progress/tasks/%s/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     task_id, strlen(body), body);
    if (write(fd, request, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char response[4096];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof response - 1 && (r = read(fd, response + got, sizeof response - 1 - got)) > 0) got += (size_t)r;
    response[got] = '\0';
    close(fd);
    int status = -1;
    return sscanf(response, "HTTP/1.1 %d", &status) == 1 ? status : -1;
}

static int json_has(progress_engine *engine, const char *task_id, const char *needle) {
    char *json = NULL;
    if (progress_task_get(engine, task_id, &json) != PROGRESS_OK) return 0;
    int found = strstr(json, needle) != NULL;
    progress_string_free(json);
    return found;
}

int main(void) {
    progress_engine *engine = NULL;
    if (progress_engine_open("{\"listen\": \"127.0.0.1:0\"}", &engine) != PROGRESS_OK) {
        fprintf(stderr, "open: %s\n", progress_last_error());
        return 1;
    }
    int requested = -1;
    CHECK(progress_task_cancel_requested(engine, "nope", &requested) == PROGRESS_E_NOT_FOUND && requested == 0 &&
              *progress_last_error(), "unknown task: %s", progress_last_error());
    requested = -1;
    CHECK(progress_task_cancel_requested(engine, NULL, &requested) == PROGRESS_E_INVALID_ARGUMENT && requested == 0,
          "NULL task_id");
    requested = -1;
    CHECK(progress_task_cancel_requested(engine, "", &requested) == PROGRESS_E_INVALID_ARGUMENT && requested == 0,
          "empty task_id");
    CHECK(progress_task_cancel_requested(engine, "nope", NULL) == PROGRESS_E_INVALID_ARGUMENT, "NULL requested");
    CHECK(progress_task_cancel_requested(NULL, "nope", &requested) == PROGRESS_E_INVALID_ARGUMENT, "NULL engine");

    progress_task_create(engine, "c-task", "sdxl", "image_generation", NULL);

    const long long total = 1000;
    long long step, asked_at = -1, seen_at = -1;
    for (step = 1; step <= total; step++) {
        progress_update(engine, "c-task", step, total, NULL);
        if (step == 10) {
            /* Served by the listener thread; the 202 comes once the request is recorded. */
            int status = post_cancel(progress_engine_port(engine), "c-task", "{\"reason\": \"asked from C\"}");
            asked_at = step;
            CHECK(status == 202, "POST answered %d", status);
            CHECK(json_has(engine, "c-task", "\"cancel_requested\":true") &&
                      json_has(engine, "c-task", "\"cancel_reason\":\"asked from C\""),
                  "the task's JSON shows the request");
            CHECK(json_has(engine, "c-task", "\"status\":\"executing\""), "the request alone changes no status");
        }
        if (progress_task_cancel_requested(engine, "c-task", &requested) != PROGRESS_OK) {
            CHECK(0, "step %lld: %s", step, progress_last_error());
            break;
        }
        if (requested) {
            seen_at = step;
            CHECK(progress_task_cancel(engine, "c-task", "asked from C") == PROGRESS_OK, "cancel: %s",
                  progress_last_error());
            break;
        }
        if (asked_at >= 0) break; /* asked, not seen: checked below */
    }
    CHECK(seen_at == 10 && asked_at == 10, "request seen at step %lld, asked at %lld", seen_at, asked_at);
    CHECK(progress_task_cancel_requested(engine, "c-task", &requested) == PROGRESS_OK && requested == 0,
          "after the answer: %d", requested);
    CHECK(json_has(engine, "c-task", "\"status\":\"cancelled\"") &&
              json_has(engine, "c-task", "\"cancel_requested\":false") &&
              json_has(engine, "c-task", "\"error\":\"asked from C\""),
          "the task's JSON after the answer");
    CHECK(post_cancel(progress_engine_port(engine), "c-task", "{}") == 409, "a cancelled task is not cancelled again");

    progress_task_create(engine, "done", "sdxl", NULL, NULL);
    progress_task_complete(engine, "done");
    requested = -1;
    CHECK(progress_task_cancel_requested(engine, "done", &requested) == PROGRESS_OK && requested == 0,
          "a finished task");

    progress_engine_close(engine);
    if (failures) return 1;
    printf("cancel: all checks passed\n");
    return 0;
}
