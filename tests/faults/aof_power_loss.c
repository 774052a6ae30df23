/*
 * aof_power_loss.so — LD_PRELOAD for redis-server: a power cut's loss of the page cache, for the append-only file.
 *
 * A SIGKILLed redis-server loses nothing it has write()n: the kernel still holds it and writes it out. What
 * `appendfsync everysec` may lose is what a machine crash takes with the page cache: every AOF write since the
 * last fsync. This library makes a SIGKILL lose exactly that. Writes to the AOF that receives the commands
 * (Redis 7: appendonlydir/...incr.aof; older: appendonly.aof) are held in this process's memory and reach the
 * file only when Redis syncs it (fsync / fdatasync, from its background thread once a second with everysec) or
 * closes it. Everything else passes through.
 *
 * AOF_POWER_LOSS_LOG (optional): a file that gets "write BYTES" per held write and "sync BYTES" per sync, so a test
 * can tell how much was still unsynced when the process died.
 *
 * Build: cc -shared -fPIC -O1 -o aof_power_loss.so aof_power_loss.c -ldl -lpthread
 */
#define _GNU_SOURCE

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FD 4096

struct held {
    int tracked;
    char *buf;
    size_t len, cap;
};

static struct held held[MAX_FD];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -2;

static ssize_t real_write(int fd, const void *buf, size_t n)
{
    static ssize_t (*fn)(int, const void *, size_t);
    if (!fn)
        fn = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    return fn(fd, buf, n);
}

static void log_line(const char *what, size_t bytes)
{
    if (log_fd == -2) {
        const char *path = getenv("AOF_POWER_LOSS_LOG");
        log_fd = path ? open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : -1;
    }
    if (log_fd < 0)
        return;
    char line[64];
    int n = snprintf(line, sizeof line, "%s %zu\n", what, bytes);
    real_write(log_fd, line, (size_t)n);
}

static int is_aof(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t len = strlen(base);
    return (len > 9 && strcmp(base + len - 9, ".incr.aof") == 0) || strcmp(base, "appendonly.aof") == 0;
}

static int track(int fd, const char *path)
{
    if (fd >= 0 && fd < MAX_FD && path && is_aof(path)) {
        pthread_mutex_lock(&lock);
        held[fd].tracked = 1;
        held[fd].len = 0;
        pthread_mutex_unlock(&lock);
    }
    return fd;
}

/* Writes what is held for fd to the file. Under `lock`. */
static void flush_held(int fd)
{
    struct held *h = &held[fd];
    size_t off = 0;
    while (off < h->len) {
        ssize_t n = real_write(fd, h->buf + off, h->len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    if (h->len)
        log_line("sync", h->len);
    h->len = 0;
}

#define OPEN_MODE(flags, mode)                                                                                 \
    mode_t mode = 0;                                                                                           \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                                                                     \
        va_list ap;                                                                                            \
        va_start(ap, flags);                                                                                   \
        mode = (mode_t)va_arg(ap, int);                                                                        \
        va_end(ap);                                                                                            \
    }

int open(const char *path, int flags, ...)
{
    OPEN_MODE(flags, mode)
    static int (*fn)(const char *, int, ...);
    if (!fn)
        fn = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    return track(fn(path, flags, mode), path);
}

int open64(const char *path, int flags, ...)
{
    OPEN_MODE(flags, mode)
    static int (*fn)(const char *, int, ...);
    if (!fn)
        fn = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open64");
    return track(fn(path, flags, mode), path);
}

int openat(int dir, const char *path, int flags, ...)
{
    OPEN_MODE(flags, mode)
    static int (*fn)(int, const char *, int, ...);
    if (!fn)
        fn = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
    return track(fn(dir, path, flags, mode), path);
}

int openat64(int dir, const char *path, int flags, ...)
{
    OPEN_MODE(flags, mode)
    static int (*fn)(int, const char *, int, ...);
    if (!fn)
        fn = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat64");
    return track(fn(dir, path, flags, mode), path);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    if (fd < 0 || fd >= MAX_FD || !held[fd].tracked)
        return real_write(fd, buf, n);
    pthread_mutex_lock(&lock);
    struct held *h = &held[fd];
    if (h->len + n > h->cap) {
        size_t cap = h->cap ? h->cap : 1 << 16;
        while (cap < h->len + n)
            cap *= 2;
        char *grown = realloc(h->buf, cap);
        if (!grown) {
            pthread_mutex_unlock(&lock);
            return real_write(fd, buf, n);
        }
        h->buf = grown;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, buf, n);
    h->len += n;
    log_line("write", n);
    pthread_mutex_unlock(&lock);
    return (ssize_t)n;
}

static int synced(int fd, const char *name)
{
    if (fd >= 0 && fd < MAX_FD && held[fd].tracked) {
        pthread_mutex_lock(&lock);
        flush_held(fd);
        pthread_mutex_unlock(&lock);
    }
    int (*fn)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    return fn(fd);
}

int fsync(int fd) { return synced(fd, "fsync"); }

int fdatasync(int fd) { return synced(fd, "fdatasync"); }

int close(int fd)
{
    if (fd >= 0 && fd < MAX_FD && held[fd].tracked) {
        pthread_mutex_lock(&lock);
        flush_held(fd); /* a clean close (an AOF switch) keeps its data, as the kernel would */
        held[fd].tracked = 0;
        pthread_mutex_unlock(&lock);
    }
    int (*fn)(int) = (int (*)(int))dlsym(RTLD_NEXT, "close");
    return fn(fd);
}
