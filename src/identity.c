#include "identity.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

/* NULL when absent, or when it cannot be read: the identity then starts that part afresh. */
static char *meta_get(store *s, const char *key)
{
    tly_err e;
    char *v;
    return store_meta_get(s, key, &v, &e) == TALLY_OK ? v : NULL;
}

static int64_t meta_int(store *s, const char *key)
{
    char *v = meta_get(s, key);
    int64_t n = v ? strtoll(v, NULL, 10) : 0;
    free(v);
    return n;
}

static void meta_set_int(const meta_sink *s, const char *key, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)v);
    s->set(s->ud, key, buf);
}

static void copy_id(char dst[37], const char *src)
{
    snprintf(dst, 37, "%s", src ? src : "");
}

static void new_session(identity *id, const meta_sink *s, int64_t now_wall)
{
    id->changed = 1;
    tly_uuid4(id->session_id);
    id->session_index++;
    id->session_started_ms = now_wall;
    s->set(s->ud, "session_id", id->session_id);
    meta_set_int(s, "session_index", id->session_index);
    meta_set_int(s, "session_started_ms", id->session_started_ms);
}

int identity_load(identity *id, store *s, int64_t timeout_ms, int64_t now_wall, tly_err *err)
{
    memset(id, 0, sizeof *id);
    id->timeout_ms = timeout_ms;
    tly_err e;
    char *anon = meta_get(s, "anonymous_id");
    if (anon && strlen(anon) == 36) {
        copy_id(id->anonymous_id, anon);
    } else {
        if (tly_uuid4(id->anonymous_id)) {
            free(anon);
            return tly_err_set(err, TALLY_EIO, "store: cannot load the identity");
        }
        store_meta_set(s, "anonymous_id", id->anonymous_id, &e);
    }
    free(anon);
    id->user_id = meta_get(s, "user_id");
    id->traits = meta_get(s, "traits");
    char *sid = meta_get(s, "session_id");
    copy_id(id->session_id, sid);
    free(sid);
    id->session_index = meta_int(s, "session_index");
    id->session_started_ms = meta_int(s, "session_started_ms");
    id->last_seen_wall = id->saved_wall = meta_int(s, "last_seen_ms");
    (void)now_wall;
    return store_commit(s, &e) ? tly_err_set(err, TALLY_EIO, "store: cannot load the identity") : TALLY_OK;
}

void identity_free(identity *id)
{
    free(id->user_id);
    free(id->traits);
    id->user_id = id->traits = NULL;
}

/* Merges an identify call's traits into the stored ones (later values win, key by key). */
static void merge_traits(identity *id, const meta_sink *s, const char *json, size_t len)
{
    tj_arena *a = tj_arena_new();
    if (!a) return;
    tj_value *old = NULL, *add = NULL;
    tj_error err;
    if (tj_parse(a, json, len, &add, &err) || add->type != TJ_OBJECT) goto out;
    if (!id->traits || tj_parse(a, id->traits, strlen(id->traits), &old, &err) || old->type != TJ_OBJECT)
        old = tj_new(a, TJ_OBJECT);
    if (!old) goto out;
    for (size_t i = 0; i < add->u.obj.n; i++)
        if (tj_object_set(a, old, add->u.obj.m[i].key, add->u.obj.m[i].klen, add->u.obj.m[i].val)) goto out;
    tbuf b = TBUF_INIT;
    if (tj_write(&b, old) == 0 && !b.oom) {
        free(id->traits);
        id->traits = tbuf_steal(&b);
        s->set(s->ud, "traits", id->traits);
    }
    tbuf_free(&b);
out:
    tj_arena_free(a);
}

static void logout(identity *id, const meta_sink *s)
{
    id->changed = 1;
    free(id->user_id);
    free(id->traits);
    id->user_id = id->traits = NULL;
    s->set(s->ud, "user_id", NULL);
    s->set(s->ud, "traits", NULL);
    tly_uuid4(id->anonymous_id);
    s->set(s->ud, "anonymous_id", id->anonymous_id);
}

static int is_identify(const tj_value *m)
{
    const tj_value *type = tj_object_get(m, "type");
    return type && type->type == TJ_STRING && type->u.str.len == 8 && !memcmp(type->u.str.s, "identify", 8);
}

static void apply_identify(identity *id, const meta_sink *s, const tj_value *m)
{
    const tj_value *user = tj_object_get(m, "userId"), *traits = tj_object_get(m, "traits");
    if (user && user->type == TJ_STRING && user->u.str.len) {
        char *u = strdup(user->u.str.s);
        if (u) {
            free(id->user_id);
            id->user_id = u;
            s->set(s->ud, "user_id", u);
            id->changed = 1;
        }
    }
    if (traits) {
        tbuf b = TBUF_INIT;
        if (tj_write(&b, traits) == 0 && !b.oom) merge_traits(id, s, b.data, b.len);
        tbuf_free(&b);
    }
}

void identity_apply(identity *id, const meta_sink *s, int kind, const tj_value *m, int64_t now_mono, int64_t now_wall)
{
    assert(!m == (kind == REC_RESET || kind == REC_SESSION_START)); /* control records carry no message */
    if (kind == REC_RESET) {
        logout(id, s);
        new_session(id, s, now_wall);
    } else if (kind == REC_SESSION_START) {
        new_session(id, s, now_wall);
    } else {
        /* idle time: monotonic within this run; across a restart only the wall clock can tell */
        int64_t idle = id->last_seen_mono ? now_mono - id->last_seen_mono
                                          : (id->last_seen_wall ? now_wall - id->last_seen_wall : 0);
        if (!id->session_id[0] || idle >= id->timeout_ms) new_session(id, s, now_wall);
    }
    if (m && is_identify(m)) apply_identify(id, s, m);
    id->last_seen_mono = now_mono;
    /* persisted at most once a second: the timeout is minutes, and a write per message is waste */
    id->last_seen_wall = now_wall;
    if (now_wall - id->saved_wall >= 1000) {
        meta_set_int(s, "last_seen_ms", now_wall);
        id->saved_wall = now_wall;
    }
}

void identity_ids(const identity *id, msg_ids *out)
{
    out->anonymous_id = id->anonymous_id;
    out->user_id = id->user_id;
    out->session_id = id->session_id[0] ? id->session_id : NULL;
    out->session_index = id->session_index;
    out->session_started_ms = id->session_started_ms;
    out->traits = id->traits;
}

char *identity_json(const identity *id)
{
    tbuf b = TBUF_INIT;
    tbuf_puts(&b, "{\"anonymousId\":");
    tj_write_string(&b, id->anonymous_id, strlen(id->anonymous_id));
    if (id->user_id) {
        tbuf_puts(&b, ",\"userId\":");
        tj_write_string(&b, id->user_id, strlen(id->user_id));
    }
    if (id->session_id[0]) {
        char started[25];
        tly_iso8601(id->session_started_ms, started);
        tbuf_printf(&b, ",\"session\":{\"id\":\"%s\",\"index\":%lld,\"started_at\":\"%s\"}", id->session_id,
                    (long long)id->session_index, started);
    }
    tbuf_putc(&b, '}');
    if (b.oom) {
        tbuf_free(&b);
        return NULL;
    }
    return tbuf_steal(&b);
}
