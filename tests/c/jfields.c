#include "jfields.h"

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
