#include "harness.h"

struct th_case *th_cases;
int th_failed_now;

/* Runs every registered test, or only those whose name contains argv[1]. */
int main(int argc, char **argv)
{
    /* constructors register in reverse; reverse again so tests run in file order */
    struct th_case *rev = NULL;
    while (th_cases) { struct th_case *n = th_cases->next; th_cases->next = rev; rev = th_cases; th_cases = n; }
    int passed = 0, failed = 0;
    for (struct th_case *c = rev; c; c = c->next) {
        if (argc > 1 && !strstr(c->name, argv[1])) continue;
        th_failed_now = 0;
        c->fn();
        if (th_failed_now) { failed++; printf("FAIL %s\n", c->name); }
        else { passed++; printf("ok   %s\n", c->name); }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
