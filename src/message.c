#include "message.h"

#include <assert.h>
#include <string.h>

#include "internal.h"
#include "iso8601.h"

static const char *const type_names[MT_COUNT] = {
    [MT_TRACK] = "track", [MT_IDENTIFY] = "identify", [MT_PAGE] = "page",
    [MT_SCREEN] = "screen", [MT_GROUP] = "group", [MT_ALIAS] = "alias"};

const char *msg_type_name(int t)
{
    assert(t >= 0 && t < MT_COUNT);
    return t >= 0 && t < MT_COUNT ? type_names[t] : "?";
}

int msg_type_from(const char *s, size_t len)
{
    for (int i = 0; i < MT_COUNT; i++)
        if (strlen(type_names[i]) == len && !memcmp(s, type_names[i], len)) return i;
    return -1;
}

int msg_check_string(const char *field, const char *s, int required, size_t *lenp, tly_err *err)
{
    *lenp = 0;
    if (!s) return required ? tly_err_set(err, TALLY_EINVAL, "%s: required", field) : TALLY_OK;
    size_t len = *lenp = strlen(s), bad;
    if (required && len == 0) return tly_err_set(err, TALLY_EINVAL, "%s: must not be empty", field);
    if (len > TALLY_MAX_MESSAGE_BYTES)
        return tly_err_set(err, TALLY_ETOOBIG, "%s: %zu bytes, over the %d-byte message limit", field, len,
                        TALLY_MAX_MESSAGE_BYTES);
    if (!tj_utf8_valid(s, len, &bad))
        return tly_err_set(err, TALLY_EINVAL, "%s: invalid UTF-8 at byte %zu", field, bad);
    return TALLY_OK;
}

int msg_check_object(const char *field, const char *json, size_t *len, tly_err *err)
{
    *len = 0;
    if (!json) return TALLY_OK;
    size_t n = strlen(json);
    if (n > TALLY_MAX_MESSAGE_BYTES)
        return tly_err_set(err, TALLY_ETOOBIG, "%s: %zu bytes, over the %d-byte message limit", field, n,
                        TALLY_MAX_MESSAGE_BYTES);
    tj_error je;
    if (tj_validate(json, n, &je)) return tly_err_set(err, TALLY_EINVAL, "%s: invalid JSON: %s", field, je.msg);
    size_t i = 0;
    while (json[i] == ' ' || json[i] == '\t' || json[i] == '\n' || json[i] == '\r') i++;
    if (json[i] != '{') return tly_err_set(err, TALLY_EINVAL, "%s: expected a JSON object", field);
    *len = n;
    return TALLY_OK;
}

/* ---- whole-message validation ---- */

static int want_string(const tj_value *m, const char *field, int required, tly_err *err)
{
    const tj_value *v = tj_object_get(m, field);
    if (!v) return required ? tly_err_set(err, TALLY_EINVAL, "%s: required", field) : TALLY_OK;
    if (v->type != TJ_STRING) return tly_err_set(err, TALLY_EINVAL, "%s: expected a string", field);
    if (required && v->u.str.len == 0) return tly_err_set(err, TALLY_EINVAL, "%s: must not be empty", field);
    return TALLY_OK;
}

static int want_object(const tj_value *m, const char *field, tly_err *err)
{
    const tj_value *v = tj_object_get(m, field);
    if (!v || v->type == TJ_OBJECT) return TALLY_OK;
    if (v->type == TJ_RAW && v->u.str.len && v->u.str.s[0] == '{') return TALLY_OK;
    return tly_err_set(err, TALLY_EINVAL, "%s: expected an object", field);
}

/* The receiver (and the sqlite destination) deduplicate by messageId, so two messages with the
 * same id are one message to them: an id that is empty, blank or carries control characters would
 * merge distinct messages, or look equal to another when printed. Refused, not replaced: the
 * caller chose the id, so it hears why; leaving it out gets a UUIDv4. */
static int check_message_id(const char *id, size_t len, tly_err *err)
{
    const unsigned char *s = (const unsigned char *)id;
    size_t blank = 0;
    if (len == 0) return tly_err_set(err, TALLY_EINVAL, "messageId: must not be empty (leave it out to get a UUIDv4)");
    if (len > TALLY_MAX_MESSAGE_ID_BYTES)
        return tly_err_set(err, TALLY_EINVAL, "messageId: %zu bytes, over the %d-byte limit", len, TALLY_MAX_MESSAGE_ID_BYTES);
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return tly_err_set(err, TALLY_EINVAL, "messageId: control character at byte %zu", i);
        blank += s[i] == ' ';
    }
    if (blank == len) return tly_err_set(err, TALLY_EINVAL, "messageId: must not be only whitespace");
    if (s[0] == ' ' || s[len - 1] == ' ')
        return tly_err_set(err, TALLY_EINVAL, "messageId: must not begin or end with whitespace");
    return TALLY_OK;
}

static int has_id(const tj_value *m, const char *field)
{
    const tj_value *v = tj_object_get(m, field);
    return v && v->type == TJ_STRING && v->u.str.len > 0;
}

int msg_validate(const tj_value *m, int need_id, tly_err *err)
{
    if (!m || m->type != TJ_OBJECT) return tly_err_set(err, TALLY_EINVAL, "message: expected a JSON object");
    const tj_value *type = tj_object_get(m, "type");
    if (!type) return tly_err_set(err, TALLY_EINVAL, "type: required (track, identify, page, screen, group or alias)");
    int t = type->type == TJ_STRING ? msg_type_from(type->u.str.s, type->u.str.len) : -1;
    if (t < 0) return tly_err_set(err, TALLY_EINVAL, "type: expected one of track, identify, page, screen, group, alias");
    int rc;
    static const char *const objects[] = {"properties", "traits", "context", "integrations"};
    for (size_t i = 0; i < sizeof objects / sizeof *objects; i++)
        if ((rc = want_object(m, objects[i], err))) return rc;
    static const char *const strings[] = {"messageId", "timestamp", "userId", "anonymousId", "name", "category"};
    for (size_t i = 0; i < sizeof strings / sizeof *strings; i++)
        if ((rc = want_string(m, strings[i], 0, err))) return rc;
    const tj_value *ts = tj_object_get(m, "timestamp");
    if (ts && !tly_iso8601_valid(ts->u.str.s, ts->u.str.len))
        return tly_err_set(err, TALLY_EINVAL, "timestamp: expected an ISO-8601 date and time with a time zone, "
                        "like 2024-01-31T12:00:00.000Z");
    const tj_value *mid = tj_object_get(m, "messageId");
    if (mid && (rc = check_message_id(mid->u.str.s, mid->u.str.len, err))) return rc;
    if (t == MT_TRACK && (rc = want_string(m, "event", 1, err))) return rc;
    if (t == MT_GROUP && (rc = want_string(m, "groupId", 1, err))) return rc;
    if (t == MT_ALIAS && ((rc = want_string(m, "previousId", 1, err)) || (rc = want_string(m, "userId", 1, err))))
        return rc;
    if (need_id && !has_id(m, "userId") && !has_id(m, "anonymousId"))
        return tly_err_set(err, TALLY_EINVAL, "userId or anonymousId: one is required");
    return TALLY_OK;
}

/* ---- whole-message check on the text (tally_send) ----
 * msg_validate's checks, in its order and with its messages, on what one tj_scan pass found: the
 * caller's thread never builds the tree (the processor does, once). tests/c/test_send_check.c
 * holds the two to the same verdicts on a corpus, tests/fuzz/fuzz_send.c on random texts. */

enum { F_TYPE, F_PROPERTIES, F_TRAITS, F_CONTEXT, F_INTEGRATIONS, F_MESSAGE_ID, F_TIMESTAMP, F_USER_ID,
       F_ANONYMOUS_ID, F_NAME, F_CATEGORY, F_EVENT, F_GROUP_ID, F_PREVIOUS_ID, F_LIBRARY, F_SESSION, F_COUNT };

static const tj_field text_fields[F_COUNT] = {
    [F_TYPE] = TJ_FIELD("type", -1), [F_PROPERTIES] = TJ_FIELD("properties", -1),
    [F_TRAITS] = TJ_FIELD("traits", -1), [F_CONTEXT] = TJ_FIELD("context", -1),
    [F_INTEGRATIONS] = TJ_FIELD("integrations", -1), [F_MESSAGE_ID] = TJ_FIELD("messageId", -1),
    [F_TIMESTAMP] = TJ_FIELD("timestamp", -1), [F_USER_ID] = TJ_FIELD("userId", -1),
    [F_ANONYMOUS_ID] = TJ_FIELD("anonymousId", -1), [F_NAME] = TJ_FIELD("name", -1),
    [F_CATEGORY] = TJ_FIELD("category", -1), [F_EVENT] = TJ_FIELD("event", -1),
    [F_GROUP_ID] = TJ_FIELD("groupId", -1), [F_PREVIOUS_ID] = TJ_FIELD("previousId", -1),
    [F_LIBRARY] = TJ_FIELD("library", F_CONTEXT), [F_SESSION] = TJ_FIELD("session", F_CONTEXT),
};

/* A string field's value, decoded into scratch when it holds escapes; NULL when out of memory. */
static const char *text_of(const char *json, const tj_field *f, tbuf *scratch, size_t *len)
{
    *len = f->len;
    if (!f->escaped) return json + f->at;
    tbuf_reset(scratch);
    if (tbuf_reserve(scratch, f->len + 1)) return NULL;
    *len = tj_unescape(scratch->data, json + f->at, f->len);
    return scratch->data;
}

/* want_string on a field: present, a string, not empty */
static int text_string(const tj_field *f, const char *field, int required, tly_err *err)
{
    if (!f->found) return required ? tly_err_set(err, TALLY_EINVAL, "%s: required", field) : TALLY_OK;
    if (f->first != '"') return tly_err_set(err, TALLY_EINVAL, "%s: expected a string", field);
    if (required && f->len == 0) return tly_err_set(err, TALLY_EINVAL, "%s: must not be empty", field);
    return TALLY_OK; /* an escape decodes to at least one byte: empty as text is empty decoded */
}

static int text_has_id(const tj_field *f) { return f->found && f->first == '"' && f->len > 0; }

int msg_check_text(const char *json, size_t len, int need_id, tbuf *scratch, msg_text *out, tly_err *err)
{
    tj_field f[F_COUNT];
    memcpy(f, text_fields, sizeof f);
    tj_error je;
    size_t written, n;
    int rc = tj_scan(json, len, f, F_COUNT, &written, &je);
    if (rc == TALLY_ENOMEM) return tly_err_set(err, rc, "out of memory");
    if (rc) return tly_err_set(err, TALLY_EINVAL, "message: invalid JSON: %s", je.msg);
    size_t i = 0;
    while (json[i] == ' ' || json[i] == '\t' || json[i] == '\n' || json[i] == '\r') i++;
    if (json[i] != '{') return tly_err_set(err, TALLY_EINVAL, "message: expected a JSON object");
    if (!f[F_TYPE].found) return tly_err_set(err, TALLY_EINVAL, "type: required (track, identify, page, screen, group or alias)");
    const char *s = f[F_TYPE].first == '"' ? text_of(json, &f[F_TYPE], scratch, &n) : NULL;
    if (f[F_TYPE].first == '"' && !s) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    int t = s ? msg_type_from(s, n) : -1;
    if (t < 0) return tly_err_set(err, TALLY_EINVAL, "type: expected one of track, identify, page, screen, group, alias");
    static const struct { int f; const char *name; } objects[] = {
        {F_PROPERTIES, "properties"}, {F_TRAITS, "traits"}, {F_CONTEXT, "context"}, {F_INTEGRATIONS, "integrations"}};
    for (size_t k = 0; k < sizeof objects / sizeof *objects; k++)
        if (f[objects[k].f].found && f[objects[k].f].first != '{')
            return tly_err_set(err, TALLY_EINVAL, "%s: expected an object", objects[k].name);
    static const struct { int f; const char *name; } strings[] = {
        {F_MESSAGE_ID, "messageId"}, {F_TIMESTAMP, "timestamp"}, {F_USER_ID, "userId"},
        {F_ANONYMOUS_ID, "anonymousId"}, {F_NAME, "name"}, {F_CATEGORY, "category"}};
    for (size_t k = 0; k < sizeof strings / sizeof *strings; k++)
        if ((rc = text_string(&f[strings[k].f], strings[k].name, 0, err))) return rc;
    if (f[F_TIMESTAMP].found) {
        if (!(s = text_of(json, &f[F_TIMESTAMP], scratch, &n))) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
        if (!tly_iso8601_valid(s, n))
            return tly_err_set(err, TALLY_EINVAL, "timestamp: expected an ISO-8601 date and time with a time zone, "
                               "like 2024-01-31T12:00:00.000Z");
    }
    if (f[F_MESSAGE_ID].found) {
        if (!(s = text_of(json, &f[F_MESSAGE_ID], scratch, &n))) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
        if ((rc = check_message_id(s, n, err))) return rc;
    }
    if (t == MT_TRACK && (rc = text_string(&f[F_EVENT], "event", 1, err))) return rc;
    if (t == MT_GROUP && (rc = text_string(&f[F_GROUP_ID], "groupId", 1, err))) return rc;
    if (t == MT_ALIAS && ((rc = text_string(&f[F_PREVIOUS_ID], "previousId", 1, err)) ||
                          (rc = text_string(&f[F_USER_ID], "userId", 1, err))))
        return rc;
    if (need_id && !text_has_id(&f[F_USER_ID]) && !text_has_id(&f[F_ANONYMOUS_ID]))
        return tly_err_set(err, TALLY_EINVAL, "userId or anonymousId: one is required");
    int ctx = f[F_CONTEXT].found;
    *out = (msg_text){
        .type = t,
        .written = written,
        .given = (f[F_MESSAGE_ID].found ? MSG_GIVEN_MESSAGE_ID : 0) | (f[F_TIMESTAMP].found ? MSG_GIVEN_TIMESTAMP : 0) |
                 (f[F_ANONYMOUS_ID].found ? MSG_GIVEN_ANONYMOUS_ID : 0) |
                 (f[F_PREVIOUS_ID].found ? MSG_GIVEN_PREVIOUS_ID : 0) | (ctx ? MSG_GIVEN_CONTEXT : 0) |
                 (ctx && f[F_LIBRARY].found ? MSG_GIVEN_LIBRARY : 0) | (ctx && f[F_SESSION].found ? MSG_GIVEN_SESSION : 0),
        .user_size = f[F_USER_ID].found && f[F_USER_ID].len ? f[F_USER_ID].written : 0,
        .traits_size = f[F_TRAITS].found ? f[F_TRAITS].written : MSG_NO_TRAITS,
    };
    return TALLY_OK;
}

/* ---- building ---- */

static int put_str(tj_arena *a, tj_value *m, const char *key, const char *s, size_t len)
{
    if (!s) return 0;
    tj_value *v = tj_new_string(a, s, len);
    return v ? tj_object_set(a, m, key, strlen(key), v) : TALLY_ENOMEM;
}

static int put_raw(tj_arena *a, tj_value *m, const char *key, const char *json, size_t len)
{
    if (!json) return 0;
    tj_value *v = tj_new_raw(a, json, len);
    return v ? tj_object_set(a, m, key, strlen(key), v) : TALLY_ENOMEM;
}

static const struct {
    int         type;
    const char *s1, *s2, *json;  /* field names for the record's three arguments */
} rec_shape[] = {
    [REC_TRACK]    = {MT_TRACK, "event", NULL, "properties"},
    [REC_IDENTIFY] = {MT_IDENTIFY, "userId", NULL, "traits"},
    [REC_PAGE]     = {MT_PAGE, "name", "category", "properties"},
    [REC_SCREEN]   = {MT_SCREEN, "name", NULL, "properties"},
    [REC_GROUP]    = {MT_GROUP, "groupId", NULL, "traits"},
    [REC_ALIAS]    = {MT_ALIAS, "userId", "previousId", NULL},
};

int msg_type_of_rec(int kind)
{
    assert(kind >= 0 && (size_t)kind < sizeof rec_shape / sizeof *rec_shape && rec_shape[kind].s1);
    return rec_shape[kind].type;
}

/* A failed parse or expansion names what is wrong in je; tj_* leave it empty only when memory ran out. */
static int tj_failed(tly_err *err, const tj_error *je)
{
    return je->msg[0] ? tly_err_set(err, TALLY_EINVAL, "%s", je->msg) : tly_err_set(err, TALLY_ENOMEM, "out of memory");
}

int msg_from_rec(tj_arena *a, const intake_rec *r, tj_value **out, tly_err *err)
{
    *out = NULL;
    if (r->kind == REC_SEND) {
        /* tally_send checked this text (msg_check_text) before queueing it: built without a second
         * check, and its objects kept as text where writing them would give the same bytes, as a
         * typed call's properties are (context too: stamping splices its members into the text) */
        assert(tj_validate(r->json, r->json_len, NULL) == TALLY_OK);
        return tj_parse_shallow(a, r->json, r->json_len, NULL, out) ? tly_err_set(err, TALLY_ENOMEM, "out of memory")
                                                                          : TALLY_OK;
    }
    tj_value *m = tj_new(a, TJ_OBJECT);
    if (!m) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    const char *tn = type_names[msg_type_of_rec(r->kind)];
    if (put_str(a, m, "type", tn, strlen(tn)) ||
        put_str(a, m, rec_shape[r->kind].s1, r->s1, r->s1_len) ||
        (rec_shape[r->kind].s2 && put_str(a, m, rec_shape[r->kind].s2, r->s2, r->s2_len)) ||
        (rec_shape[r->kind].json && put_raw(a, m, rec_shape[r->kind].json, r->json, r->json_len)))
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    *out = m;
    return TALLY_OK;
}

/* ---- stamping ---- */

enum { CTX_LIBRARY = 1, CTX_TRAITS = 2, CTX_SESSION = 4 };

static int add_context(tj_arena *a, tj_value *ctx, unsigned have, const msg_ids *ids, tly_err *err);

/* A context kept as text (tally_send's, as written) gets the members it lacks spliced into the
 * text: the same bytes as expanding it and adding them, without parsing it into a tree. */
static int stamp_raw_context(tj_arena *a, tj_value *ctx, const msg_ids *ids, tly_err *err);

static int stamp_context(tj_arena *a, tj_value *m, const msg_ids *ids, tly_err *err)
{
    tj_error je = {0, ""};
    tj_value *ctx = tj_object_get(m, "context");
    if (ctx && ctx->type == TJ_RAW && ctx->u.str.len >= 2 && ctx->u.str.s[0] == '{') return stamp_raw_context(a, ctx, ids, err);
    if (!ctx) {
        if (!(ctx = tj_new(a, TJ_OBJECT)) || tj_object_set(a, m, "context", 7, ctx)) return tj_failed(err, &je);
    } else if (ctx->type == TJ_RAW && tj_expand(a, ctx, &je)) {
        return tj_failed(err, &je);
    }
    if (ctx->type != TJ_OBJECT) return tly_err_set(err, TALLY_EINVAL, "context: expected an object");
    unsigned have = (tj_object_get(ctx, "library") ? CTX_LIBRARY : 0) | (tj_object_get(ctx, "traits") ? CTX_TRAITS : 0) |
                    (tj_object_get(ctx, "session") ? CTX_SESSION : 0);
    return add_context(a, ctx, have, ids, err);
}

static int stamp_raw_context(tj_arena *a, tj_value *ctx, const msg_ids *ids, tly_err *err)
{
    static const char *const keys[] = {"library", "traits", "session"}; /* CTX_* bits, in order */
    unsigned have = tj_raw_keys(ctx->u.str.s, ctx->u.str.len, keys, 3);
    tj_value *add = tj_new(a, TJ_OBJECT);
    if (!add) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    int rc = add_context(a, add, have, ids, err);
    if (rc) return rc;
    if ((rc = tj_raw_append(a, ctx, add)))
        return rc == TALLY_ENOMEM ? tly_err_set(err, rc, "out of memory") : tly_err_set(err, rc, "context: cannot be written");
    return TALLY_OK;
}

/* The context members the runtime adds, into ctx (a tree), but those in have (CTX_*). */
static int add_context(tj_arena *a, tj_value *ctx, unsigned have, const msg_ids *ids, tly_err *err)
{
    if (!(have & CTX_LIBRARY)) {
        tj_value *lib = tj_new(a, TJ_OBJECT);
        if (!lib || put_str(a, lib, "name", "tally", 5) ||
            put_str(a, lib, "version", TALLY_VERSION, strlen(TALLY_VERSION)) ||
            tj_object_set(a, ctx, "library", 7, lib))
            return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    if (ids->traits && !(have & CTX_TRAITS) && put_raw(a, ctx, "traits", ids->traits, strlen(ids->traits)))
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    if (ids->session_id && !(have & CTX_SESSION)) {
        char started[25];
        tly_iso8601(ids->session_started_ms, started);
        tj_value *s = tj_new(a, TJ_OBJECT), *idx = tj_new_int(a, ids->session_index);
        if (!s || !idx || put_str(a, s, "id", ids->session_id, strlen(ids->session_id)) ||
            tj_object_set(a, s, "index", 5, idx) || put_str(a, s, "started_at", started, 24) ||
            tj_object_set(a, ctx, "session", 7, s))
            return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    return TALLY_OK;
}

#define LIT(s) (sizeof(s) - 1)

size_t msg_stamp_bound_given(unsigned given, int type, int client, size_t ids_bytes)
{
    /* a member added to an object costs a comma, its quoted key, a colon and its value */
    const size_t uuid = 2 + 36, iso = 2 + 24;
    size_t n = ids_bytes;
    if (!(given & MSG_GIVEN_MESSAGE_ID)) n += LIT(",\"messageId\":") + uuid;
    if (!(given & MSG_GIVEN_TIMESTAMP)) n += LIT(",\"timestamp\":") + iso;
    if (client && !(given & MSG_GIVEN_ANONYMOUS_ID)) n += LIT(",\"anonymousId\":") + uuid;
    if (client && type == MT_ALIAS && !(given & MSG_GIVEN_PREVIOUS_ID)) n += LIT(",\"previousId\":") + uuid;
    int ctx = given & MSG_GIVEN_CONTEXT;
    if (!ctx) n += LIT(",\"context\":{}");
    if (!ctx || !(given & MSG_GIVEN_LIBRARY))
        n += LIT(",\"library\":{\"name\":\"tally\",\"version\":\"\"}") + strlen(TALLY_VERSION);
    if (client && (!ctx || !(given & MSG_GIVEN_SESSION)))
        n += LIT(",\"session\":{\"id\":,\"index\":,\"started_at\":}") + uuid + 20 + iso; /* 20: an int64 */
    return n;
}

size_t msg_stamp_bound(const tj_value *m, int type, int client, size_t ids_bytes)
{
    const tj_value *ctx = m ? tj_object_get(m, "context") : NULL;
    unsigned given = (m && tj_object_get(m, "messageId") ? MSG_GIVEN_MESSAGE_ID : 0) |
                     (m && tj_object_get(m, "timestamp") ? MSG_GIVEN_TIMESTAMP : 0) |
                     (m && tj_object_get(m, "anonymousId") ? MSG_GIVEN_ANONYMOUS_ID : 0) |
                     (m && tj_object_get(m, "previousId") ? MSG_GIVEN_PREVIOUS_ID : 0) |
                     (ctx ? MSG_GIVEN_CONTEXT : 0) | (tj_object_get(ctx, "library") ? MSG_GIVEN_LIBRARY : 0) |
                     (tj_object_get(ctx, "session") ? MSG_GIVEN_SESSION : 0);
    return msg_stamp_bound_given(given, type, client, ids_bytes);
}

int msg_stamp(tj_arena *a, tj_value *m, const msg_ids *ids, int64_t ts_ms, tly_err *err)
{
    if (!tj_object_get(m, "messageId")) {
        char id[37];
        if (tly_uuid4(id) || put_str(a, m, "messageId", id, 36)) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    if (!tj_object_get(m, "timestamp")) {
        char ts[25];
        tly_iso8601(ts_ms, ts);
        if (put_str(a, m, "timestamp", ts, 24)) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    if (ids->anonymous_id && !tj_object_get(m, "anonymousId") &&
        put_str(a, m, "anonymousId", ids->anonymous_id, strlen(ids->anonymous_id)))
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    const tj_value *type = tj_object_get(m, "type");
    if (ids->anonymous_id && type && type->type == TJ_STRING && type->u.str.len == 5 &&
        !memcmp(type->u.str.s, "alias", 5) && !tj_object_get(m, "previousId") &&
        put_str(a, m, "previousId", ids->anonymous_id, strlen(ids->anonymous_id)))
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    if (ids->user_id && !tj_object_get(m, "userId") &&
        put_str(a, m, "userId", ids->user_id, strlen(ids->user_id)))
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    return stamp_context(a, m, ids, err);
}
