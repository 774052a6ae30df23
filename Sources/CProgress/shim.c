#include "CProgress.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

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
