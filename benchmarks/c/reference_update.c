/*
 * reference_update — the least a keyed progress update can cost in C, the "limit" of bench_update's ratio:
 * FNV-1a of the id to pick a shard and a slot, a pthread mutex per shard, clock_gettime(CLOCK_REALTIME) for the
 * update's time, a comparison of the stored id, a bounds check, four stores (step, total, progress, time), a
 * sequence number, unlock. No history, no change feed, no validation beyond the bounds: what every engine must
 * do at least. Built in its own translation unit and called like a library function (never inlined into the
 * benchmark loop).
 */
#define _POSIX_C_SOURCE 200809L

#include "reference_update.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define SHARDS 64
#define SLOTS 64 /* per shard, open addressing */

struct task {
    char id[256];
    size_t id_len;
    long long step, total;
    double progress, updated_at;
    uint64_t seq;
};

struct shard {
    pthread_mutex_t lock;
    struct task tasks[SLOTS];
    int used[SLOTS];
} __attribute__((aligned(64)));

static struct shard shards[SHARDS];
static int initialised;

static uint64_t fnv1a(const char *s, size_t *len)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    for (; p[n]; n++) {
        h ^= p[n];
        h *= 1099511628211ull;
    }
    *len = n;
    return h;
}

static struct task *find(struct shard *sh, uint64_t h, const char *id, size_t len)
{
    for (unsigned i = 0; i < SLOTS; i++) {
        unsigned slot = (unsigned)((h >> 6) + i) % SLOTS;
        if (!sh->used[slot])
            return NULL;
        struct task *t = &sh->tasks[slot];
        if (t->id_len == len && memcmp(t->id, id, len) == 0)
            return t;
    }
    return NULL;
}

int reference_create(const char *task_id)
{
    if (!initialised) {
        for (int i = 0; i < SHARDS; i++)
            pthread_mutex_init(&shards[i].lock, NULL);
        initialised = 1;
    }
    size_t len;
    uint64_t h = fnv1a(task_id, &len);
    if (len >= sizeof shards[0].tasks[0].id)
        return -1;
    struct shard *sh = &shards[h % SHARDS];
    for (unsigned i = 0; i < SLOTS; i++) {
        unsigned slot = (unsigned)((h >> 6) + i) % SLOTS;
        if (sh->used[slot])
            continue;
        memcpy(sh->tasks[slot].id, task_id, len + 1);
        sh->tasks[slot].id_len = len;
        sh->used[slot] = 1;
        return 0;
    }
    return -1;
}

__attribute__((noinline)) int reference_update(const char *task_id, long long step, long long total)
{
    size_t len;
    uint64_t h = fnv1a(task_id, &len);
    struct shard *sh = &shards[h % SHARDS];
    struct timespec ts;
    pthread_mutex_lock(&sh->lock);
    clock_gettime(CLOCK_REALTIME, &ts);
    struct task *t = find(sh, h, task_id, len);
    if (t == NULL || step < 0 || total <= 0 || step > total) {
        pthread_mutex_unlock(&sh->lock);
        return -1;
    }
    t->step = step;
    t->total = total;
    t->progress = (double)step / (double)total;
    t->updated_at = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    t->seq++;
    pthread_mutex_unlock(&sh->lock);
    return 0;
}
