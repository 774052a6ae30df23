/*
 * Minimal JSON reading for the C stress tests (stress.c, fleet_stress.c): the value of one member of an
 * object, without a parser. Enough for the engine's own output, which is valid JSON; not for input from
 * elsewhere.
 */
#ifndef PROGRESS_TESTS_JSON_SCAN_H
#define PROGRESS_TESTS_JSON_SCAN_H

#include <stdlib.h>
#include <string.h>

static inline const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

static inline const char *skip_string(const char *p) /* p at the opening quote */
{
    for (p++; *p && *p != '"'; p++)
        if (*p == '\\' && p[1])
            p++;
    return *p ? p + 1 : NULL;
}

static inline const char *skip_value(const char *p)
{
    int depth = 0;
    do {
        p = skip_ws(p);
        if (*p == '"') {
            if (!(p = skip_string(p)))
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        else if (depth == 0) { /* number, true, false, null */
            while (*p && *p != ',' && *p != '}' && *p != ']')
                p++;
            return p;
        }
        if (!*p)
            return NULL;
        p++;
    } while (depth > 0);
    return p;
}

/* Walks only the object's own members: nested objects have keys of the same names ("status"). */
static inline const char *json_member(const char *obj, const char *key)
{
    size_t len = strlen(key);
    const char *p = obj ? skip_ws(obj) : NULL;
    if (!p || *p++ != '{')
        return NULL;
    for (;;) {
        p = skip_ws(p);
        if (*p != '"')
            return NULL;
        const char *name = p + 1, *end = skip_string(p);
        if (!end)
            return NULL;
        p = skip_ws(end);
        if (*p++ != ':')
            return NULL;
        p = skip_ws(p);
        if ((size_t)(end - 1 - name) == len && memcmp(name, key, len) == 0)
            return p;
        if (!(p = skip_value(p)))
            return NULL;
        p = skip_ws(p);
        if (*p++ != ',')
            return NULL;
    }
}

/* A numeric member as a long long; -1 when missing or not a number (seq and counters are >= 0). */
static inline long long json_int(const char *obj, const char *key)
{
    const char *v = json_member(obj, key);
    char *end;
    long long n = v ? strtoll(v, &end, 10) : -1;
    return v && end != v ? n : -1;
}

#endif
