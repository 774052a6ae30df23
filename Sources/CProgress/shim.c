#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sigtimedwait, pipe2, pthread_setname_np */
#endif
#include "CProgress.h"
/* The version's one source; only its macros are used here. */
#include "../../include/progress.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local char *last_error;
static _Thread_local size_t last_error_cap;

/* A pthread key only to free each thread's buffer when the thread exits (_Thread_local has no destructor). */
static pthread_key_t buffer_key;
static pthread_once_t buffer_key_once = PTHREAD_ONCE_INIT;
static void make_buffer_key(void) { pthread_key_create(&buffer_key, free); }

void CProgress_set_last_error(const char *msg, size_t len) {
    if (len + 1 > last_error_cap) {
        pthread_once(&buffer_key_once, make_buffer_key);
        char *grown = realloc(last_error, len + 1);
        if (grown == NULL) {
            /* Keep the previous buffer; a truncated message beats none. */
            if (last_error_cap == 0) return;
            len = last_error_cap - 1;
        } else {
            last_error = grown;
            last_error_cap = len + 1;
            pthread_setspecific(buffer_key, grown);
        }
    }
    memcpy(last_error, msg, len);
    last_error[len] = '\0';
}

const char *CProgress_last_error(void) { return last_error ? last_error : ""; }

long long CProgress_load_relaxed(const volatile long long *p) {
    return __atomic_load_n((const long long *)p, __ATOMIC_RELAXED);
}

void CProgress_store_relaxed(volatile long long *p, long long value) {
    __atomic_store_n((long long *)p, value, __ATOMIC_RELAXED);
}

/* Lines dropped because stderr could not take them (see CProgress_log_line). */
static _Atomic unsigned long stderr_dropped;

int CProgress_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int CProgress_name_this_thread(const char *name) { return pthread_setname_np(pthread_self(), name); }

static int sigpipe_pending(void) {
    sigset_t pending;
    return sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

static sigset_t sigpipe_only(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    return set;
}

void CProgress_sigpipe_hold(CProgress_sigpipe_guard *guard) {
    sigset_t pipe_only = sigpipe_only();
    guard->was_pending = sigpipe_pending();
    pthread_sigmask(SIG_BLOCK, &pipe_only, &guard->mask);
}

void CProgress_sigpipe_release(const CProgress_sigpipe_guard *guard) {
    if (!guard->was_pending && sigpipe_pending()) {
        sigset_t pipe_only = sigpipe_only();
        const struct timespec now = {0, 0};
        while (sigtimedwait(&pipe_only, NULL, &now) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &guard->mask, NULL);
}

/* POLLOUT on a pipe means at least PIPE_BUF (4096) bytes are free, so a line of at most 3,900 bytes is written
 * whole and at once. A pipe whose reader has gone (POLLERR) takes nothing: the line is dropped. */
static int write_line(const char *line, size_t len) {
    if (len > 3900) len = 3900;
    struct pollfd pfd = {.fd = STDERR_FILENO, .events = POLLOUT};
    if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLOUT) || (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)))
        return -1;
    CProgress_sigpipe_guard guard;
    CProgress_sigpipe_hold(&guard);
    int ok = write(STDERR_FILENO, line, len) < 0 ? -1 : 0;
    CProgress_sigpipe_release(&guard);
    return ok;
}

void CProgress_log_line(const char *line, size_t len) {
    if (write_line(line, len) != 0) stderr_dropped++;
}

unsigned long CProgress_log_dropped(void) { return stderr_dropped; }

void CProgress_log_note(const char *line, size_t len, unsigned long dropped) {
    if (write_line(line, len) == 0) stderr_dropped -= dropped;
}

static _Atomic(CProgress_log_sink) log_sink;

void CProgress_set_log_sink(CProgress_log_sink sink) { log_sink = sink; }

void CProgress_log_event(const char *level, const char *event, const char *message) {
    CProgress_log_sink sink = log_sink;
    if (sink) {
        sink(level, event, message);
        return;
    }
    char line[1024];
    int n = snprintf(line, sizeof line, "progress engine: %s: %s\n", event, message);
    if (n > 0) CProgress_log_line(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

int CProgress_version_number(void) {
    return PROGRESS_VERSION_NUMBER;
}
