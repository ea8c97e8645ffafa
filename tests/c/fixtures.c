#include "fixtures.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tally.h"
#include "util.h"

#define LOG_CAP (1u << 20)

static struct {
    pthread_mutex_t mu;
    char           *text;     /* malloc'd, grows to LOG_CAP */
    size_t          len, cap;
    char           *snapshot; /* what tf_logged last returned */
    const char     *needle;
    int             lines, needle_lines;
} cap = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, NULL, NULL, 0, 0};

void tf_log(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    size_t n = strlen(msg);
    pthread_mutex_lock(&cap.mu);
    cap.lines++;
    if (cap.needle && strstr(msg, cap.needle)) cap.needle_lines++;
    if (cap.len + n + 2 > cap.cap && cap.cap < LOG_CAP) {
        size_t want = cap.cap ? cap.cap : 4096;
        while (want < cap.len + n + 2 && want < LOG_CAP) want *= 2;
        char *grown = realloc(cap.text, want);
        if (grown) {
            cap.text = grown;
            cap.cap = want;
        }
    }
    if (cap.len + n + 2 <= cap.cap) {
        memcpy(cap.text + cap.len, msg, n);
        cap.len += n;
        cap.text[cap.len++] = '\n';
        cap.text[cap.len] = '\0';
    }
    pthread_mutex_unlock(&cap.mu);
}

void tf_log_needle(const char *needle)
{
    pthread_mutex_lock(&cap.mu);
    cap.needle = needle;
    cap.needle_lines = 0;
    pthread_mutex_unlock(&cap.mu);
}

void tf_log_reset(void)
{
    pthread_mutex_lock(&cap.mu);
    cap.len = 0;
    if (cap.text) cap.text[0] = '\0';
    cap.lines = cap.needle_lines = 0;
    free(cap.snapshot);
    cap.snapshot = NULL;
    pthread_mutex_unlock(&cap.mu);
}

const char *tf_logged(void)
{
    pthread_mutex_lock(&cap.mu);
    free(cap.snapshot);
    cap.snapshot = malloc(cap.len + 1);
    if (cap.snapshot) {
        if (cap.len) memcpy(cap.snapshot, cap.text, cap.len);
        cap.snapshot[cap.len] = '\0';
    }
    pthread_mutex_unlock(&cap.mu);
    return cap.snapshot ? cap.snapshot : "";
}

int tf_log_lines(void)
{
    pthread_mutex_lock(&cap.mu);
    int n = cap.lines;
    pthread_mutex_unlock(&cap.mu);
    return n;
}

int tf_log_needle_lines(void)
{
    pthread_mutex_lock(&cap.mu);
    int n = cap.needle_lines;
    pthread_mutex_unlock(&cap.mu);
    return n;
}

/* Sets NULL-terminated key/value pairs; 0, or -1 with the refused key printed. */
static int set_pairs(tally_config *c, const char *const *kv)
{
    for (; kv && kv[0]; kv += 2)
        if (tally_config_set(c, kv[0], kv[1]) != TALLY_OK) {
            fprintf(stderr, "  config %s=%s: %s\n", kv[0], kv[1] ? kv[1] : "(null)", tally_errmsg(NULL));
            return -1;
        }
    return 0;
}

static int set_va(tally_config *c, va_list ap)
{
    for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
        const char *kv[3] = {k, va_arg(ap, const char *), NULL};
        if (set_pairs(c, kv)) return -1;
    }
    return 0;
}

/* A new config: defaults, then the pairs in ap, then tf_log as the logger (capture reset). */
static tally_config *build(const char *const *defaults, va_list ap, int *rc)
{
    tally_config *c = tally_config_new();
    *rc = TALLY_ENOMEM;
    if (!c) return NULL;
    if (set_pairs(c, defaults) || set_va(c, ap)) {
        *rc = TALLY_ECONFIG;
        tally_config_free(c);
        return NULL;
    }
    tf_log_reset();
    tally_config_set_logger(c, tf_log, NULL);
    *rc = TALLY_OK;
    return c;
}

tally_config *tf_vconfig(const char *const *defaults, va_list ap)
{
    int rc;
    return build(defaults, ap, &rc);
}

int tf_vopen(tally_t **out, const char *const *defaults, va_list ap)
{
    int rc;
    *out = NULL;
    tally_config *c = build(defaults, ap, &rc);
    if (!c) return rc;
    rc = tally_open(c, out);
    if (rc != TALLY_OK) fprintf(stderr, "  tally_open: %s\n", tally_errmsg(NULL));
    tally_config_free(c);
    return rc;
}

/* The varargs openers pass their first key through as a one-pair default. */
tally_t *tf_open(const char *key, ...)
{
    va_list ap;
    va_start(ap, key);
    const char *first[3] = {key, key ? va_arg(ap, const char *) : NULL, NULL};
    tally_t *t;
    tf_vopen(&t, first, ap);
    va_end(ap);
    return t;
}

int tf_open_rc(tally_t **out, const char *key, ...)
{
    va_list ap;
    va_start(ap, key);
    const char *first[3] = {key, key ? va_arg(ap, const char *) : NULL, NULL};
    int rc = tf_vopen(out, first, ap);
    va_end(ap);
    return rc;
}

tally_config *tf_config(const char *key, ...)
{
    va_list ap;
    va_start(ap, key);
    const char *first[3] = {key, key ? va_arg(ap, const char *) : NULL, NULL};
    int rc;
    tally_config *c = build(first, ap, &rc);
    va_end(ap);
    return c;
}

tally_t *tu_open_file(const char *file, ...)
{
    unlink(file);
    const char *defaults[] = {"out", file, "log_level", "off", NULL};
    va_list ap;
    va_start(ap, file);
    tally_t *t;
    tf_vopen(&t, defaults, ap);
    va_end(ap);
    return t;
}

void tf_files_init(tf_files *f, const char *tag, int n, const char *const *consent)
{
    char name[128];
    size_t at = 0;
    memset(f, 0, sizeof *f);
    f->n = n < TF_FILES_MAX ? n : TF_FILES_MAX;
    snprintf(name, sizeof name, "%s.db", tag);
    f->db = tu_path(name);
    unlink(f->db);
    at += (size_t)snprintf(f->dests, sizeof f->dests, "[");
    for (int i = 0; i < f->n; i++) {
        snprintf(name, sizeof name, "%s-%c.ndjson", tag, 'a' + i);
        f->out[i] = tu_path(name);
        unlink(f->out[i]);
        at += (size_t)snprintf(f->dests + at, sizeof f->dests - at, "%s{\"type\":\"file\",\"name\":\"%c\",\"path\":\"%s\"%s%s}",
                               i ? "," : "", 'a' + i, f->out[i], consent && consent[i] ? ",\"consent\":" : "",
                               consent && consent[i] ? consent[i] : "");
    }
    snprintf(f->dests + at, sizeof f->dests - at, "]");
}

void tf_files_free(tf_files *f)
{
    free(f->db);
    for (int i = 0; i < f->n; i++) free(f->out[i]);
    memset(f, 0, sizeof *f);
}

tally_t *tf_files_open(tf_files *f, ...)
{
    const char *defaults[] = {"store", f->db, "destinations", f->dests, "log_level", "off", NULL};
    va_list ap;
    va_start(ap, f);
    tally_t *t;
    tf_vopen(&t, defaults, ap);
    va_end(ap);
    return t;
}

int tf_lines(const char *path)
{
    int n = tu_count_lines(path);
    return n < 0 ? 0 : n;
}

int tf_lines_with(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "r");
    if (!fp) return 0;
    char *line = NULL;
    size_t room = 0;
    int n = 0;
    while (getline(&line, &room, fp) > 0) n += strstr(line, needle) != NULL;
    free(line);
    fclose(fp);
    return n;
}

void tf_clean_http_environment(void)
{
    static const char *const vars[] = {"TALLY_WRITE_KEY", "TALLY_ENDPOINT", "http_proxy", "HTTP_PROXY",
                                       "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                                       "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", NULL};
    for (int i = 0; vars[i]; i++) unsetenv(vars[i]);
}

char *tf_rules_dir(const char *tag, const char *first_file, ...)
{
    static int counter;
    char name[128];
    snprintf(name, sizeof name, "%s-%d", tag, ++counter);
    char *dir = tu_path(name);
    if (!dir) return NULL;
    mkdir(dir, 0755);
    va_list ap;
    va_start(ap, first_file);
    for (const char *file = first_file; file; file = va_arg(ap, const char *)) {
        const char *src = va_arg(ap, const char *);
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, file);
        tu_write_file(path, src);
    }
    va_end(ap);
    return dir;
}
