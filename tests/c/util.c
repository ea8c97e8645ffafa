#include "util.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tally.h"

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 2) {
            char *b = realloc(buf, cap *= 2);
            if (!b) { free(buf); buf = NULL; }
            else buf = b;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

int tu_file_contains(const char *path, const char *needle)
{
    size_t len = 0;
    char *data = tu_read_file(path, &len);
    int found = data && memmem(data, len, needle, strlen(needle)) != NULL;
    free(data);
    return found;
}

int tu_count_lines(const char *path)
{
    char *s = tu_read_file(path, NULL);
    if (!s) return -1;
    int n = 0;
    for (char *p = s; *p; p++) n += *p == '\n';
    free(s);
    return n;
}

char *tu_line(const char *path, int n)
{
    char *s = tu_read_file(path, NULL);
    if (!s) return NULL;
    char *p = s;
    for (int i = 0; i < n && p; i++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    char *out = NULL;
    if (p && *p) {
        char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        out = malloc(len + 1);
        if (out) { memcpy(out, p, len); out[len] = '\0'; }
    }
    free(s);
    return out;
}

const char *tu_tmpdir(void)
{
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/tally-test-XXXXXX");
        if (!mkdtemp(dir)) { perror("mkdtemp"); exit(2); }
    }
    return dir;
}

char *tu_path(const char *name)
{
    char *p = malloc(strlen(tu_tmpdir()) + strlen(name) + 2);
    if (p) sprintf(p, "%s/%s", tu_tmpdir(), name);
    return p;
}

void tu_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "  cannot write %s\n", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

int tu_track_waiting(struct tally *t, const char *event, const char *props)
{
    int rc;
    while ((rc = tally_track(t, event, props)) == TALLY_EFULL) sched_yield();
    return rc;
}

void tu_pad_props(char *buf, size_t pad)
{
    strcpy(buf, "{\"pad\":\"");
    memset(buf + 8, 'x', pad);
    strcpy(buf + 8 + pad, "\"}");
}
