#include "jfields.h"

#include <string.h>
#include <time.h>

#include "tally.h"

long long tu_jint(const tj_value *o, const char *key)
{
    const tj_value *v = tj_object_get(o, key);
    return v && v->type == TJ_INT ? (long long)v->u.i : -1;
}

double tu_jnum(const tj_value *o, const char *key)
{
    const tj_value *v = tj_object_get(o, key);
    return !v ? -1 : v->type == TJ_DOUBLE ? v->u.d : v->type == TJ_INT ? (double)v->u.i : -1;
}

const char *tu_jstr(const tj_value *o, const char *key)
{
    const tj_value *v = tj_object_get(o, key);
    return v && v->type == TJ_STRING ? v->u.str.s : NULL;
}

long long tu_stat(tally_t *t, const char *dest, const char *field)
{
    char *json = NULL;
    if (tally_stats(t, &json) != TALLY_OK) return -1;
    tj_arena *a = tj_arena_new();
    tj_value *root;
    tj_error err;
    long long v = -1;
    size_t len = strlen(json);
    if (a && !tj_parse(a, tj_strdup(a, json, len), len, &root, &err)) {
        if (!dest) {
            v = tu_jint(root, field);
        } else {
            tj_value *ds = tj_object_get(root, "destinations");
            for (size_t i = 0; ds && ds->type == TJ_ARRAY && i < ds->u.arr.n; i++) {
                const char *nm = tu_jstr(ds->u.arr.items[i], "name");
                if (nm && strstr(nm, dest)) {
                    v = tu_jint(ds->u.arr.items[i], field);
                    break;
                }
            }
        }
    }
    tj_arena_free(a);
    tally_free(json);
    return v;
}

long tu_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int tu_wait_stat(tally_t *t, const char *dest, const char *field, long long want, int timeout_ms)
{
    long deadline = tu_mono_ms() + timeout_ms;
    while (tu_stat(t, dest, field) < want) {
        if (tu_mono_ms() >= deadline) return -1;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval, not a stand-in for synchronisation */
    }
    return 0;
}
