/* Starts tests/e2e/collector.py as a child process and talks to its control
 * endpoints with libcurl. See collector.h for the contract. */
#include "collector.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum {
    START_TIMEOUT_MS = 10000, /* python3 start-up on a loaded CI machine */
    CONTROL_TIMEOUT_MS = 5000,
    STOP_TIMEOUT_MS = 5000,
    POLL_MS = 10,
    MAX_EXTRA_ARGS = 32,
};

struct collector {
    pid_t pid;
    int port;
    int tls;
    char url[64];
};

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int file_exists(const char *path) { return access(path, R_OK) == 0; }

/* Tests run from the source root, from build/ or from a subdirectory of it, so
 * walking up from the current directory finds the script without configuration. */
static int find_script(char *out, size_t size)
{
    const char *src = getenv("TALLY_SRC_DIR");
    if (src && *src) {
        int n = snprintf(out, size, "%s/tests/e2e/collector.py", src);
        if (n > 0 && (size_t)n < size && file_exists(out)) return 0;
        fprintf(stderr, "collector: %s/tests/e2e/collector.py not found (TALLY_SRC_DIR)\n", src);
        return -1;
    }
    char dir[PATH_MAX];
    if (!getcwd(dir, sizeof dir)) {
        fprintf(stderr, "collector: getcwd: %s\n", strerror(errno));
        return -1;
    }
    for (;;) {
        int n = snprintf(out, size, "%s/tests/e2e/collector.py", dir);
        if (n > 0 && (size_t)n < size && file_exists(out)) return 0;
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir) break;
        *slash = '\0';
    }
    fprintf(stderr, "collector: tests/e2e/collector.py not found from the current directory "
                    "or its parents; set TALLY_SRC_DIR\n");
    return -1;
}

/* Reads the first stdout line of the child, which must be "PORT <n>".
 * Sets *reaped when the child turned out to have exited and was waited for,
 * so its pid must not be signalled any more. */
static int read_port(int fd, pid_t pid, int *reaped)
{
    char line[64];
    size_t len = 0;
    long deadline = now_ms() + START_TIMEOUT_MS;
    while (len < sizeof line - 1) {
        long left = deadline - now_ms();
        if (left <= 0) {
            fprintf(stderr, "collector: no PORT line within %d ms\n", START_TIMEOUT_MS);
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            fprintf(stderr, "collector: poll: %s\n", strerror(errno));
            return -1;
        }
        if (r == 0) continue;
        ssize_t got = read(fd, line + len, 1); /* one byte: never consume past the line */
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            int status = 0;
            if (waitpid(pid, &status, WNOHANG) == pid) {
                *reaped = 1;
                fprintf(stderr, "collector: exited (status %d) before listening\n",
                        WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
            } else {
                fprintf(stderr, "collector: closed stdout before printing PORT\n");
            }
            return -1;
        }
        if (line[len] == '\n') break;
        len++;
    }
    line[len] = '\0';
    int port = 0;
    char extra;
    if (sscanf(line, "PORT %d%c", &port, &extra) != 1 || port <= 0 || port > 65535) {
        fprintf(stderr, "collector: unexpected first line \"%s\"\n", line);
        return -1;
    }
    return port;
}

static void kill_and_reap(pid_t pid)
{
    kill(pid, SIGTERM);
    long deadline = now_ms() + STOP_TIMEOUT_MS;
    for (;;) {
        pid_t r = waitpid(pid, NULL, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR)) return;
        if (now_ms() >= deadline) break;
        sleep_ms(POLL_MS);
    }
    fprintf(stderr, "collector: pid %ld ignored SIGTERM, killing it\n", (long)pid);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
}

static pid_t spawn(const char *const *argv, int stdout_fd)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    pid_t pid = -1;
    if (posix_spawn_file_actions_init(&fa) != 0) return -1;
    if (posix_spawnattr_init(&attr) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return -1;
    }
    /* A test may block or ignore signals; the collector must still die on SIGTERM. */
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    /* stdin from /dev/null so the child never competes for a terminal. */
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, stdout_fd, 1);
    int err = posix_spawnp(&pid, argv[0], &fa, &attr, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (err != 0) {
        fprintf(stderr, "collector: cannot run %s: %s\n", argv[0], strerror(err));
        return -1;
    }
    return pid;
}

collector *collector_start_opts(const char *const *extra_args)
{
    char script[PATH_MAX + 32];
    if (find_script(script, sizeof script) != 0) return NULL;
    const char *python = getenv("TALLY_PYTHON");
    if (!python || !*python) python = "python3";

    const char *argv[MAX_EXTRA_ARGS + 3];
    size_t argc = 0;
    int tls = 0;
    argv[argc++] = python;
    argv[argc++] = script;
    for (size_t i = 0; extra_args && extra_args[i]; i++) {
        if (i >= MAX_EXTRA_ARGS) {
            fprintf(stderr, "collector: more than %d extra arguments\n", MAX_EXTRA_ARGS);
            return NULL;
        }
        if (strcmp(extra_args[i], "--tls") == 0) tls = 1;
        argv[argc++] = extra_args[i];
    }
    argv[argc] = NULL;

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        fprintf(stderr, "collector: pipe: %s\n", strerror(errno));
        return NULL;
    }
    pid_t pid = spawn(argv, fds[1]);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return NULL;
    }
    int reaped = 0;
    int port = read_port(fds[0], pid, &reaped);
    /* The collector never writes to stdout again, so the pipe can go now. */
    close(fds[0]);
    if (port < 0) {
        if (!reaped) kill_and_reap(pid);
        return NULL;
    }

    collector *c = calloc(1, sizeof *c);
    if (!c) {
        kill_and_reap(pid);
        return NULL;
    }
    c->pid = pid;
    c->port = port;
    c->tls = tls;
    snprintf(c->url, sizeof c->url, "%s://127.0.0.1:%d", tls ? "https" : "http", port);
    /* Reference-counted by libcurl, so this pairs safely with the cleanup in
     * collector_stop even when the code under test also initialises libcurl. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return c;
}

collector *collector_start(const char *log_path)
{
    const char *args[] = {"--log", log_path, NULL};
    return collector_start_opts(log_path ? args : NULL);
}

const char *collector_url(const collector *c) { return c->url; }

int collector_port(const collector *c) { return c->port; }

struct body {
    char *data;
    size_t len;
    int oom;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct body *b = userdata;
    size_t n = size * nmemb;
    char *grown = realloc(b->data, b->len + n + 1);
    if (!grown) {
        b->oom = 1;
        return 0;
    }
    memcpy(grown + b->len, data, n);
    b->len += n;
    grown[b->len] = '\0';
    b->data = grown;
    return n;
}

/* One request on a fresh handle: no connection survives to be cut by an
 * injected outage. Returns the HTTP status (or -1) and, if out is given, the
 * malloc'd body. */
static long control_request(const collector *c, const char *path, const char *post_body, char **out)
{
    if (out) *out = NULL;
    CURL *h = curl_easy_init();
    if (!h) return -1;
    char url[128];
    snprintf(url, sizeof url, "%s%s", c->url, path);
    struct body b = {NULL, 0, 0};
    struct curl_slist *headers = NULL;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)CONTROL_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)CONTROL_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (c->tls) {
        /* Our own throwaway server: certificate checks are what the code under
         * test is examined for, not what the control channel needs. */
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (post_body) {
        headers = curl_slist_append(headers, "Content-Type: application/json");
        headers = curl_slist_append(headers, "Expect:");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, post_body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(post_body));
    }
    CURLcode rc = curl_easy_perform(h);
    long status = -1;
    if (rc == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK || b.oom) {
        free(b.data);
        return -1;
    }
    if (out) {
        /* An empty body still yields a string, so callers need only check NULL. */
        *out = b.data ? b.data : calloc(1, 1);
    } else {
        free(b.data);
    }
    return status;
}

int collector_script(collector *c, const char *json)
{
    char *resp = NULL;
    long status = control_request(c, "/control", json, &resp);
    if (status != 200)
        fprintf(stderr, "collector: /control answered %ld: %s\n", status, resp ? resp : "(no response)");
    free(resp);
    return status == 200 ? 0 : -1;
}

char *collector_received(collector *c)
{
    char *body = NULL;
    if (control_request(c, "/received", NULL, &body) != 200) {
        free(body);
        return NULL;
    }
    return body;
}

/* The collector writes its counts before "requests" and a key appears only
 * once in the summary, so the first match is the count and not message data. */
static long extract_count(const char *json, const char *key)
{
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *p = strstr(json, pattern);
    if (!p) return -1;
    p += strlen(pattern);
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    if (*p != ':') return -1;
    p++;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno != 0) return -1;
    return v;
}

static long summary_count(collector *c, const char *key)
{
    char *body = NULL;
    long v = -1;
    if (control_request(c, "/received?summary=1", NULL, &body) == 200) v = extract_count(body, key);
    free(body);
    return v;
}

long collector_accepted(collector *c) { return summary_count(c, "accepted_messages"); }
long collector_duplicates(collector *c) { return summary_count(c, "duplicates"); }
long collector_requests(collector *c) { return summary_count(c, "total_requests"); }

static int wait_count(collector *c, const char *key, long n, int timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    for (;;) {
        long v = summary_count(c, key);
        if (v >= n) return 0;
        long left = deadline - now_ms();
        if (left <= 0) return -1;
        sleep_ms(left < POLL_MS ? left : POLL_MS);
    }
}

int collector_wait_accepted(collector *c, long n, int timeout_ms)
{
    return wait_count(c, "accepted_messages", n, timeout_ms);
}

int collector_wait_requests(collector *c, long n, int timeout_ms)
{
    return wait_count(c, "total_requests", n, timeout_ms);
}

int collector_wait_script_taken(collector *c, int timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    for (;;) {
        long v = summary_count(c, "script_remaining");
        if (v == 0) return 0;
        long left = deadline - now_ms();
        if (left <= 0) return -1;
        sleep_ms(left < POLL_MS ? left : POLL_MS);
    }
}

void collector_reset(collector *c)
{
    if (control_request(c, "/reset", "", NULL) != 200) fprintf(stderr, "collector: /reset failed\n");
}

void collector_stop(collector *c)
{
    if (!c) return;
    kill_and_reap(c->pid);
    free(c);
    curl_global_cleanup();
}
