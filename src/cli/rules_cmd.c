/* `tally rules keygen|pack|verify|test`: the operator's side of signed rule bundles
 * (docs/bundles.md). Exit codes: 0 done, 1 a bundle failed verification or a self-test failed,
 * 2 bad usage or bad input (the message names the flag or the file). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bundle.h"
#include "bundle_selftest.h"
#include "bundle_sign.h"
#include "cli.h"
#include "json.h"
#include "rules.h"

static const char usage[] =
    "usage: tally rules keygen KEYFILE\n"
    "       tally rules pack DIR --key=KEYFILE --version=N [--tests=FILE] [--config=FILE] -o BUNDLE\n"
    "       tally rules verify BUNDLE --public-key=KEY [--public-key=KEY ...]\n"
    "       tally rules test BUNDLE (--public-key=KEY [...] | --key=KEYFILE)\n"
    "  keygen  writes a new Ed25519 private key (mode 0600, never over an existing file) and prints\n"
    "          its public key: the KEY the other commands take\n"
    "  pack    signs DIR's *.lua rules (the files, names and order `--rules=DIR` loads), the\n"
    "          rule_config of --config (a JSON object) and the self-tests of --tests (docs/bundles.md)\n"
    "  verify  checks the signature against the given public keys (several: key rotation)\n"
    "  test    verifies, then runs the self-tests through the bundle's rules in a fresh sandbox\n"
    "  KEY: \"ed25519:<base64>\" as keygen prints it, or a file holding that line\n"
    "exit codes: 0 done; 1 not verified, or a self-test failed; 2 bad usage or bad input\n";

#define MAX_KEYS BUNDLE_MAX_KEYS

typedef struct rules_args {
    const char *pos[4];
    int         npos;
    const char *key, *version, *tests, *config, *out;
    const char *pub[MAX_KEYS];
    int         npub;
    int         help;
} rules_args;

static int fail2(const char *sub, const char *what, const char *msg)
{
    fprintf(stderr, "tally: rules%s%s: %s%s%s\n", sub ? " " : "", sub ? sub : "", what, *what ? ": " : "", msg);
    return 2;
}

static int parse_args(int argc, char **argv, rules_args *a, const char *sub)
{
    memset(a, 0, sizeof *a);
    static const struct { const char *name; size_t off; } flags[] = {
        {"key", offsetof(rules_args, key)},         {"version", offsetof(rules_args, version)},
        {"tests", offsetof(rules_args, tests)},     {"config", offsetof(rules_args, config)},
        {"out", offsetof(rules_args, out)},
    };
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) { a->help = 1; continue; }
        if (!strcmp(s, "-o")) {
            if (i + 1 >= argc) return fail2(sub, "-o", "expected a file name after it");
            a->out = argv[++i];
            continue;
        }
        if (s[0] != '-' || !s[1]) {
            if (a->npos == (int)(sizeof a->pos / sizeof *a->pos)) return fail2(sub, s, "unexpected argument");
            a->pos[a->npos++] = s;
            continue;
        }
        const char *eq = strchr(s, '=');
        if (strncmp(s, "--", 2) || !eq || eq == s + 2)
            return fail2(sub, s, "expected --flag=value (see tally rules --help)");
        size_t n = (size_t)(eq - s - 2);
        if (n == 10 && !strncmp(s + 2, "public-key", n)) {
            if (a->npub == MAX_KEYS) return fail2(sub, "--public-key", "too many keys");
            a->pub[a->npub++] = eq + 1;
            continue;
        }
        size_t f = 0;
        while (f < sizeof flags / sizeof *flags && (strlen(flags[f].name) != n || strncmp(s + 2, flags[f].name, n))) f++;
        if (f == sizeof flags / sizeof *flags) {
            char name[80];
            snprintf(name, sizeof name, "%.*s", (int)(n + 2 < 70 ? n + 2 : 70), s);
            return fail2(sub, name, "unknown flag (see tally rules --help)");
        }
        *(const char **)((char *)a + flags[f].off) = eq + 1;
    }
    return 0;
}

/* Reads a whole file of at most max bytes, refusing a larger one before reading it. 0, or 2/1
 * with the reason printed. */
static int read_all(const char *sub, const char *path, size_t max, char **out, size_t *len, int status)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        fprintf(stderr, "tally: rules %s: %s: %s\n", sub, path, strerror(errno));
        return status;
    }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        fprintf(stderr, "tally: rules %s: %s: not a regular file\n", sub, path);
        return status;
    }
    if ((unsigned long long)st.st_size > max) {
        close(fd);
        fprintf(stderr, "tally: rules %s: %s: %lld bytes, over the %zu-byte limit\n", sub, path, (long long)st.st_size, max);
        return status;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (!buf || got != (size_t)st.st_size) {
        free(buf);
        fprintf(stderr, "tally: rules %s: %s: cannot read\n", sub, path);
        return status;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 0;
}

/* --public-key values into keys: the text itself, or a file holding it. 0 or 2. */
static int load_public_keys(const char *sub, const rules_args *a, bundle_keys *keys)
{
    for (int i = 0; i < a->npub; i++) {
        char *text = NULL;
        size_t len;
        const char *k = a->pub[i];
        if (strncmp(k, BUNDLE_PUBKEY_PREFIX, strlen(BUNDLE_PUBKEY_PREFIX))) {
            int rc = read_all(sub, k, 4096, &text, &len, 2);
            if (rc) return rc;
            k = text;
        }
        tly_err err;
        int rc = bundle_keys_add(keys, k, &err);
        free(text);
        if (rc) return fail2(sub, "--public-key", err.msg);
    }
    return 0;
}

static int cmd_keygen(const rules_args *a)
{
    if (a->npos != 1) return fail2("keygen", "", "expected one argument, the private key file to write");
    bundle_signer *s;
    tly_err err;
    if (bundle_keygen(a->pos[0], &s, &err)) return fail2("keygen", "", err.msg);
    printf("%s\n", bundle_signer_public(s));
    fprintf(stderr, "tally: rules keygen: private key in %s (mode 0600; keep it off the devices), key id %s\n",
            a->pos[0], bundle_signer_key_id(s));
    bundle_signer_free(s);
    return 0;
}

static int cmp_names(const void *x, const void *y) { return strcmp(*(char *const *)x, *(char *const *)y); }

/* DIR's rule scripts as `--rules=DIR` loads them (rules.c): *.lua, not starting with '.', by name. */
static int list_scripts(const char *dir, char ***names, size_t *n)
{
    DIR *d = opendir(dir);
    *names = NULL;
    *n = 0;
    if (!d) return fail2("pack", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".lua") || e->d_name[0] == '.') continue;
        char **grown = realloc(*names, (*n + 1) * sizeof **names);
        if (!grown || !(grown[*n] = strdup(e->d_name))) {
            if (grown) *names = grown;
            rc = fail2("pack", "", "out of memory");
            break;
        }
        *names = grown;
        (*n)++;
    }
    closedir(d);
    if (!rc && !*n) rc = fail2("pack", dir, "no *.lua rule files in it");
    if (!rc) qsort(*names, *n, sizeof **names, cmp_names);
    return rc;
}

/* A JSON file as a tree in a. 0 or 2 with the flag named. */
static int read_json(const char *flag, const char *path, tj_arena *ar, tj_value **out)
{
    char *text;
    size_t len;
    char what[600];
    snprintf(what, sizeof what, "%s: %s", flag, path);
    int rc = read_all("pack", path, BUNDLE_MAX_BYTES, &text, &len, 2);
    if (rc) return rc;
    tj_error je;
    rc = tj_parse(ar, text, len, out, &je);
    free(text);
    if (rc) return fail2("pack", what, je.msg);
    return 0;
}

static int parse_version(const char *s, int64_t *v)
{
    if (!s || !*s) return -1;
    int64_t x = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || x > (INT64_MAX - (*p - '0')) / 10) return -1;
        x = x * 10 + (*p - '0');
    }
    *v = x;
    return x >= 1 ? 0 : -1;
}

static int add_member(tj_arena *ar, tj_value *obj, const char *key, tj_value *v)
{
    return v ? tj_object_set(ar, obj, key, strlen(key), v) : TALLY_ENOMEM;
}

/* The payload of docs/bundles.md as JSON text in *out. 0, or 2 with the reason printed. */
static int build_payload(const rules_args *a, int64_t version, tj_arena *ar, tbuf *out)
{
    char **names;
    size_t n;
    int rc = list_scripts(a->pos[0], &names, &n);
    if (rc) return rc;
    tj_value *p = tj_new(ar, TJ_OBJECT), *list = tj_new(ar, TJ_ARRAY);
    char created[25];
    tly_iso8601(tly_now_ms(), created);
    int oom = !p || !list || add_member(ar, p, "version", tj_new_int(ar, version)) ||
              add_member(ar, p, "created_at", tj_new_string(ar, created, strlen(created))) ||
              add_member(ar, p, "rules", list);
    for (size_t i = 0; !rc && !oom && i < n; i++) {
        char path[4096], *src;
        size_t len, bad;
        snprintf(path, sizeof path, "%s/%s", a->pos[0], names[i]);
        if (!bundle_name_ok(names[i], strlen(names[i]))) {
            rc = fail2("pack", path, "a bundle's file names are letters, digits, . _ - and end in .lua; rename it");
            break;
        }
        if ((rc = read_all("pack", path, BUNDLE_MAX_BYTES, &src, &len, 2))) break;
        if (!tj_utf8_valid(src, len, &bad)) {
            char at[64];
            snprintf(at, sizeof at, "not UTF-8 at byte %zu (a bundle carries scripts as JSON text)", bad);
            free(src);
            rc = fail2("pack", path, at);
            break;
        }
        tj_value *s = tj_new(ar, TJ_OBJECT);
        oom = !s || add_member(ar, s, "file", tj_new_string(ar, names[i], strlen(names[i]))) ||
              add_member(ar, s, "source", tj_new_string(ar, src, len)) || tj_array_push(ar, list, s);
        free(src);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    if (!rc && !oom && a->config) {
        tj_value *cfg;
        if ((rc = read_json("--config", a->config, ar, &cfg))) return rc;
        if (cfg->type != TJ_OBJECT) return fail2("pack", "--config", "expected a JSON object (rule name -> its ctx.config)");
        oom = add_member(ar, p, "rule_config", cfg);
    }
    if (!rc && !oom && a->tests) {
        tj_value *tests;
        tly_err err;
        if ((rc = read_json("--tests", a->tests, ar, &tests))) return rc;
        if (bundle_check_tests(tests, &err)) {
            char what[600];
            snprintf(what, sizeof what, "--tests: %s", a->tests);
            return fail2("pack", what, err.msg);
        }
        oom = add_member(ar, p, "tests", tests);
    }
    if (rc) return rc;
    if (oom || tj_write(out, p) || out->oom) return fail2("pack", "", "out of memory");
    return 0;
}

/* Writes data to path through a temporary file and a rename: a reader never sees half a bundle. */
static int write_atomic(const char *path, const char *data, size_t len)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wx");
    if (!f) return fail2("pack", tmp, strerror(errno));
    int ok = fwrite(data, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return fail2("pack", path, strerror(e));
    }
    return 0;
}

static int cmd_pack(const rules_args *a)
{
    int64_t version;
    if (a->npos != 1) return fail2("pack", "", "expected one argument, the folder of rules");
    if (!a->key) return fail2("pack", "--key", "required (the private key file from `tally rules keygen`)");
    if (!a->out) return fail2("pack", "-o", "required (the bundle file to write)");
    if (!a->version) return fail2("pack", "--version", "required (an integer above every version published before)");
    if (parse_version(a->version, &version)) return fail2("pack", "--version", "expected an integer from 1 to 2^63-1");
    bundle_signer *s;
    tly_err err;
    if (bundle_signer_load(a->key, &s, &err)) return fail2("pack", "--key", err.msg);
    tj_arena *ar = tj_arena_new();
    tbuf payload = TBUF_INIT, file = TBUF_INIT;
    bundle_keys *keys = bundle_keys_new();
    bundle *b = NULL;
    int rc = !ar || !keys ? fail2("pack", "", "out of memory") : build_payload(a, version, ar, &payload);
    if (!rc && bundle_sign(s, payload.data, payload.len, &file, &err)) rc = fail2("pack", "", err.msg);
    if (!rc && file.len > BUNDLE_MAX_BYTES) {
        char why[128];
        snprintf(why, sizeof why, "%zu bytes, over the %u-byte limit a bundle may have", file.len, BUNDLE_MAX_BYTES);
        rc = fail2("pack", a->out, why);
    }
    /* what verify and the runtime will do, done once here: pack never writes a file they refuse */
    if (!rc && (bundle_keys_add(keys, bundle_signer_public(s), &err) ||
                bundle_verify(file.data, file.len, 0, keys, &b, &err)))
        rc = fail2("pack", "the packed bundle does not verify", err.msg);
    if (!rc) rc = write_atomic(a->out, file.data, file.len);
    if (!rc)
        printf("%s: version %" PRId64 ", %zu script%s, %zu self-test%s, %zu bytes, signed by key %s\n", a->out, b->version,
               b->nscripts, b->nscripts == 1 ? "" : "s", b->tests ? b->tests->u.arr.n : 0,
               b->tests && b->tests->u.arr.n == 1 ? "" : "s", file.len, bundle_signer_key_id(s));
    bundle_free(b);
    bundle_keys_free(keys);
    tbuf_free(&payload);
    tbuf_free(&file);
    tj_arena_free(ar);
    bundle_signer_free(s);
    return rc;
}

/* Reads and verifies BUNDLE against the keys the flags give. 0 with *out set, else the status. */
static int open_bundle(const char *sub, const rules_args *a, bundle **out)
{
    *out = NULL;
    if (a->npos != 1) return fail2(sub, "", "expected one argument, the bundle file");
    bundle_keys *keys = bundle_keys_new();
    if (!keys) return fail2(sub, "", "out of memory");
    int rc = load_public_keys(sub, a, keys);
    if (!rc && a->key) {
        bundle_signer *s;
        tly_err err;
        if (bundle_signer_load(a->key, &s, &err)) rc = fail2(sub, "--key", err.msg);
        else if (bundle_keys_add(keys, bundle_signer_public(s), &err)) rc = fail2(sub, "--key", err.msg);
        if (!rc) bundle_signer_free(s);
    }
    if (!rc && !bundle_keys_count(keys))
        rc = fail2(sub, "--public-key", !strcmp(sub, "test") ? "required, or --key=KEYFILE (no script of an unverified "
                                                               "bundle is run)" : "required");
    char *bytes = NULL;
    size_t len;
    if (!rc) rc = read_all(sub, a->pos[0], BUNDLE_MAX_BYTES, &bytes, &len, 1);
    tly_err err;
    if (!rc && bundle_verify(bytes, len, 0, keys, out, &err)) {
        char safe[2100];
        tly_escape(err.msg, safe, sizeof safe);
        fprintf(stderr, "tally: rules %s: %s: %s\n", sub, a->pos[0], safe);
        rc = 1;
    }
    free(bytes);
    bundle_keys_free(keys);
    return rc;
}

static int cmd_verify(const rules_args *a)
{
    bundle *b;
    int rc = open_bundle("verify", a, &b);
    if (rc) return rc;
    printf("%s: verified: version %" PRId64 ", created %s, %zu script%s, %zu self-test%s, signed by key %s\n", a->pos[0],
           b->version, b->created_at, b->nscripts, b->nscripts == 1 ? "" : "s", b->tests ? b->tests->u.arr.n : 0,
           b->tests && b->tests->u.arr.n == 1 ? "" : "s", b->key_id);
    bundle_free(b);
    return 0;
}

static void quiet_log(void *ud, int level, const char *line)
{
    (void)ud;
    if (level <= TALLY_LOG_WARN) fprintf(stderr, "  log: %s\n", line);
}

static void print_result(void *ud, size_t index, const char *name, int passed, const char *why)
{
    (void)ud;
    (void)index;
    char n[256], w[2048];
    tly_escape(name, n, sizeof n);
    tly_escape(why, w, sizeof w);
    if (passed) printf("ok   %s\n", n);
    else printf("FAIL %s: %s\n", n, w);
}

/* msg without the private folder's path, which means nothing to the reader. */
static void strip_dir(const char *msg, const char *dir, char *out, size_t outlen)
{
    size_t dl = strlen(dir), o = 0;
    for (const char *p = msg; *p && o + 1 < outlen;) {
        if (!strncmp(p, dir, dl) && p[dl] == '/') { p += dl + 1; continue; }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

static int cmd_test(const rules_args *a)
{
    bundle *b;
    int rc = open_bundle("test", a, &b);
    if (rc) return rc;
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tally-bundle-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        bundle_free(b);
        return fail2("test", dir, strerror(errno));
    }
    tly_err err;
    rules *R = NULL;
    tly_logger log = {quiet_log, NULL, TALLY_LOG_WARN};
    rules_opts ro = {64u << 20, 1000000, 0, 1, b->rule_config, 0};
    if (bundle_extract(b, dir, &err)) {
        rc = fail2("test", "", err.msg);
    } else if (rules_open(&R, dir, &ro, &log, &err) != TALLY_OK) {
        char msg[1024];
        strip_dir(err.msg, dir, msg, sizeof msg);
        fprintf(stderr, "tally: rules test: %s: the rules do not load: %s\n", a->pos[0], msg);
        rc = 1;
    } else {
        size_t failed = 0, n = b->tests ? b->tests->u.arr.n : 0;
        if (bundle_run_tests(b, R, print_result, NULL, &failed, &err)) {
            rc = fail2("test", "", err.msg);
        } else if (!n) {
            printf("%s: version %" PRId64 ": its %zu script%s load; it has no self-tests\n", a->pos[0], b->version,
                   b->nscripts, b->nscripts == 1 ? "" : "s");
        } else {
            printf("%s: version %" PRId64 ": %zu self-test%s, %zu passed, %zu failed\n", a->pos[0], b->version, n,
                   n == 1 ? "" : "s", n - failed, failed);
            rc = failed ? 1 : 0;
        }
    }
    rules_free(R);
    for (size_t i = 0; i < b->nscripts; i++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/%s", dir, b->scripts[i].file);
        unlink(path);
    }
    rmdir(dir);
    bundle_free(b);
    return rc;
}

int cli_rules(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : NULL;
    if (!sub || !strcmp(sub, "-h") || !strcmp(sub, "--help") || !strcmp(sub, "help")) {
        fputs(usage, sub ? stdout : stderr);
        return sub ? 0 : 2;
    }
    static const char *const subs[] = {"keygen", "pack", "verify", "test", NULL};
    int known = 0;
    for (int i = 0; subs[i]; i++) known |= !strcmp(sub, subs[i]);
    if (!known) return fail2(NULL, sub, "unknown subcommand (keygen, pack, verify, test)");
    rules_args a;
    int rc = parse_args(argc - 2, argv + 2, &a, sub);
    if (rc) return rc;
    if (a.help) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(sub, "keygen")) return cmd_keygen(&a);
    if (!strcmp(sub, "pack")) return cmd_pack(&a);
    if (!strcmp(sub, "verify")) return cmd_verify(&a);
    return cmd_test(&a);
}
