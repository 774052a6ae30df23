#ifndef CPROGRESS_H
#define CPROGRESS_H
/* C shims for the Swift engine. Each exists because Swift cannot express it directly. */
#include <signal.h>
#include <stddef.h>
#include "CProgressListener.h"
#include "CProgressPreview.h"
#include "CProgressSystem.h"

/* PROGRESS_VERSION_NUMBER of include/progress.h, where the version is written once (Swift cannot read the
 * public header's macros without importing its declarations, which the engine defines itself). */
int CProgress_version_number(void);

/* Per-thread last-error message with C lifetime: Swift has no thread-local storage whose pointer stays
 * valid after the Swift call returns, and progress_last_error() hands out a pointer the caller reads later.
 * Copies `len` bytes of `msg` (not NUL-terminated) into this thread's buffer. */
void CProgress_set_last_error(const char *msg, size_t len);
/* This thread's message, "" if none. Valid until the next CProgress_set_last_error on this thread. */
const char *CProgress_last_error(void);

/* A relaxed atomic 64-bit load of caller-owned memory (a step counter written by another thread or by
 * Python): Swift's atomics only operate on memory Swift allocated itself. */
long long CProgress_load_relaxed(const volatile long long *p);
/* Writes one log line (newline included, at most 3,900 bytes: longer ones are cut) to stderr without ever
 * blocking: when stderr is a pipe or socket that nobody drains and it is full, the line is dropped and counted
 * (CProgress_log_dropped). For the engine's own log lines, which runner threads may write (a rejected update of
 * an unknown task). */
void CProgress_log_line(const char *line, size_t len);
/* Lines dropped so far and not yet reported. */
unsigned long CProgress_log_dropped(void);
/* Writes the line that reports `dropped` lost lines, as CProgress_log_line does; once written, they are no
 * longer counted. */
void CProgress_log_note(const char *line, size_t len, unsigned long dropped);
/* Where the C code's own log lines go (listener.c: libwebsockets' errors, an event loop's trouble): the engine's
 * log (EngineLog in Swift, which formats every line), set once by the engine before it starts a listener. Any
 * thread may call it. Until it is set, the message is written as it is. */
typedef void (*CProgress_log_sink)(const char *level, const char *event, const char *message);
void CProgress_set_log_sink(CProgress_log_sink sink);
void CProgress_log_event(const char *level, const char *event, const char *message);
/* SIGPIPE held back on the calling thread while the engine writes to a socket or pipe from a thread it does
 * not own (a Redis read on the caller's thread, a log line): hiredis writes without MSG_NOSIGNAL, and a host
 * that left SIGPIPE at its default would be ended by a connection reset under it. _hold blocks SIGPIPE on this
 * thread; _release takes back a SIGPIPE raised meanwhile (one that was pending before is left) and restores the
 * thread's mask. Pairs, on one thread. */
typedef struct {
    sigset_t mask;
    int was_pending;
} CProgress_sigpipe_guard;
void CProgress_sigpipe_hold(CProgress_sigpipe_guard *guard);
void CProgress_sigpipe_release(const CProgress_sigpipe_guard *guard);
/* pipe2(fds, O_CLOEXEC), which Swift's Glibc module does not declare: a pipe no program the host starts
 * inherits. Returns 0, or -1 with errno set. */
int CProgress_pipe_cloexec(int fds[2]);
/* Names the calling thread (at most 15 bytes are kept), as ps, top -H and gdb show it; Swift's Glibc module does
 * not declare pthread_setname_np. Returns 0 or an error number. */
int CProgress_name_this_thread(const char *name);
/* The matching relaxed store, for Swift code (and tests) writing a counter the engine reads. */
void CProgress_store_relaxed(volatile long long *p, long long value);

#endif
