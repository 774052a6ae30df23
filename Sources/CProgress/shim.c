#include "CProgress.h"
#include <stdlib.h>
#include <string.h>

static _Thread_local char *last_error;
static _Thread_local size_t last_error_cap;

void CProgress_set_last_error(const char *msg, size_t len) {
    if (len + 1 > last_error_cap) {
        char *grown = realloc(last_error, len + 1);
        if (grown == NULL) {
            /* Keep the previous buffer; a truncated message beats none. */
            if (last_error_cap == 0) return;
            len = last_error_cap - 1;
        } else {
            last_error = grown;
            last_error_cap = len + 1;
        }
    }
    memcpy(last_error, msg, len);
    last_error[len] = '\0';
}

const char *CProgress_last_error(void) { return last_error ? last_error : ""; }

long long CProgress_load_relaxed(const volatile long long *p) {
    return __atomic_load_n((const long long *)p, __ATOMIC_RELAXED);
}
