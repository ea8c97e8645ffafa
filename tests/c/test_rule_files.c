/* Rule and config loading reads only regular files below the configured folders: a mod author who
 * can drop files into a rule folder must not reach files outside it through symlinks, nor freeze
 * the loader with a FIFO. Named after each trick. A FIFO that blocked would hang the test: an alarm
 * turns that into a failure of the suite instead of a hung run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "tally.h"
#include "util.h"

#define HANG_BOUND_S 60 /* each FIFO case takes milliseconds; a blocked open never returns */

static int dirs_made;

static char *fresh_dir(const char *tag)
{
    char name[64];
    snprintf(name, sizeof name, "%s-%d", tag, ++dirs_made);
    char *dir = tu_path(name);
    mkdir(dir, 0755);
    return dir;
}

static char *join(const char *dir, const char *name)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

static void write_at(const char *dir, const char *name, const char *text)
{
    char *p = join(dir, name);
    tu_write_file(p, text);
    free(p);
}

static void link_at(const char *dir, const char *name, const char *target)
{
    char *p = join(dir, name);
    if (symlink(target, p) != 0) perror("symlink");
    free(p);
}

static void fifo_at(const char *dir, const char *name)
{
    char *p = join(dir, name);
    if (mkfifo(p, 0644) != 0) perror("mkfifo");
    free(p);
}

/* A file outside every rule folder: what a link would smuggle in. */
static char *outside_rule(void)
{
    char *dir = fresh_dir("outside");
    write_at(dir, "secret.lua", "return { name = 'outsider', process = function(m) m.properties.smuggled = true; return m end }\n");
    write_at(dir, "secret.json", "{\"smuggled\": true}\n");
    char *p = join(dir, "secret.lua");
    free(dir);
    return p;
}

/* Opens with the rules in `dir`; returns the status and leaves the error text in tally_errmsg. */
static int open_rules(const char *dir, tally_t **out)
{
    char *file = tu_path("rule-files.ndjson");
    int rc = tf_open_rc(out, "out", file, "rules", dir, "log_level", "off", NULL);
    free(file);
    return rc;
}

static void expect_refused(const char *dir, const char *what)
{
    tally_t *t;
    alarm(HANG_BOUND_S);
    int rc = open_rules(dir, &t);
    alarm(0);
    CHECK(rc == TALLY_ELUA || rc == TALLY_EIO);
    CHECK(t == NULL);
    CHECK_CONTAINS(tally_errmsg(NULL), what);
    if (t) tally_close(t, 0);
}

TEST(symlinked_rule_file_pointing_outside_the_folder_is_refused)
{
    char *dir = fresh_dir("rules"), *secret = outside_rule();
    link_at(dir, "10_evil.lua", secret);
    expect_refused(dir, "10_evil.lua: a symbolic link");
    free(dir);
    free(secret);
}

TEST(require_of_a_symlinked_module_is_refused)
{
    char *dir = fresh_dir("rules"), *secret = outside_rule();
    link_at(dir, "evil.lua", secret);
    write_at(dir, "10_main.lua", "require 'evil'\nreturn { name = 'main', process = function(m) return m end }\n");
    expect_refused(dir, "evil.lua: a symbolic link");
    free(dir);
    free(secret);
}

TEST(require_through_a_symlinked_subfolder_is_refused)
{
    char *dir = fresh_dir("rules"), *secret = outside_rule();
    char *outside_dir = strdup(secret);
    *strrchr(outside_dir, '/') = '\0';
    link_at(dir, "lib", outside_dir);
    write_at(dir, "10_main.lua", "require 'lib.secret'\nreturn { name = 'main', process = function(m) return m end }\n");
    expect_refused(dir, "lib/secret.lua: a symbolic link");
    free(outside_dir);
    free(dir);
    free(secret);
}

TEST(load_json_of_a_symlink_pointing_outside_is_refused)
{
    char *dir = fresh_dir("rules"), *secret_lua = outside_rule();
    char *secret = malloc(strlen(secret_lua) + 2);
    sprintf(secret, "%.*s.json", (int)(strrchr(secret_lua, '.') - secret_lua), secret_lua);
    free(secret_lua);
    link_at(dir, "plan.json", secret);
    write_at(dir, "10_plan.lua", "local p = tally.load_json('plan.json')\n"
                                 "return { name = 'plan', process = function(m) return m end }\n");
    expect_refused(dir, "plan.json: a symbolic link");
    free(dir);
    free(secret);
}

TEST(fifo_named_like_a_rule_is_refused_without_blocking)
{
    char *dir = fresh_dir("rules");
    fifo_at(dir, "10_fifo.lua");
    expect_refused(dir, "10_fifo.lua: a FIFO");
    free(dir);
}

TEST(fifo_as_a_required_module_is_refused_without_blocking)
{
    char *dir = fresh_dir("rules");
    fifo_at(dir, "slow.lua");
    write_at(dir, "10_main.lua", "require 'slow'\nreturn { name = 'main', process = function(m) return m end }\n");
    expect_refused(dir, "slow.lua: a FIFO");
    free(dir);
}

TEST(fifo_as_a_json_file_is_refused_without_blocking)
{
    char *dir = fresh_dir("rules");
    fifo_at(dir, "plan.json");
    write_at(dir, "10_plan.lua", "local p = tally.load_json('plan.json')\n"
                                 "return { name = 'plan', process = function(m) return m end }\n");
    expect_refused(dir, "plan.json: a FIFO");
    free(dir);
}

TEST(fifo_given_as_the_rules_file_is_refused_without_blocking)
{
    char *dir = fresh_dir("rules");
    fifo_at(dir, "only.lua");
    char *path = join(dir, "only.lua");
    expect_refused(path, "only.lua: a FIFO");
    free(path);
    free(dir);
}

TEST(folder_named_like_a_rule_is_refused)
{
    char *dir = fresh_dir("rules");
    char *sub = join(dir, "10_sub.lua");
    mkdir(sub, 0755);
    expect_refused(dir, "10_sub.lua: a folder");
    free(sub);
    free(dir);
}

TEST(fifo_as_a_config_file_is_refused_without_blocking)
{
    char *dir = fresh_dir("config");
    fifo_at(dir, "tally.lua");
    char *path = join(dir, "tally.lua");
    tally_config *c = tally_config_new();
    alarm(HANG_BOUND_S);
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_EIO);
    alarm(0);
    CHECK_CONTAINS(tally_errmsg(NULL), "tally.lua: a FIFO");
    tally_config_free(c);
    free(path);
    free(dir);
}

TEST(symlinked_config_file_is_refused)
{
    char *dir = fresh_dir("config"), *other = fresh_dir("elsewhere");
    write_at(other, "real.lua", "return { flush_at = 7 }\n");
    char *target = join(other, "real.lua");
    link_at(dir, "tally.lua", target);
    char *path = join(dir, "tally.lua");
    tally_config *c = tally_config_new();
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_EIO);
    CHECK_CONTAINS(tally_errmsg(NULL), "tally.lua: a symbolic link");
    tally_config_free(c);
    free(path);
    free(target);
    free(other);
    free(dir);
}

TEST(config_file_requiring_a_fifo_is_refused_without_blocking)
{
    char *dir = fresh_dir("config");
    fifo_at(dir, "part.lua");
    write_at(dir, "tally.lua", "return require 'part'\n");
    char *path = join(dir, "tally.lua");
    tally_config *c = tally_config_new();
    alarm(HANG_BOUND_S);
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_ELUA);
    alarm(0);
    CHECK_CONTAINS(tally_errmsg(NULL), "part.lua: a FIFO");
    tally_config_free(c);
    free(path);
    free(dir);
}

/* The documented choice: the configured folder itself may be a link (a deployment's "current"
 * release, say); only what is below it is confined. Its rules, modules and JSON still load. */
TEST(rule_folder_that_is_itself_a_symlink_is_allowed)
{
    char *real = fresh_dir("release"), *base = fresh_dir("deploy");
    char *lib = join(real, "lib");
    mkdir(lib, 0755);
    write_at(lib, "helper.lua", "return { mark = 'ok' }\n");
    free(lib);
    write_at(real, "data.json", "{\"v\": 2}\n");
    write_at(real, "10_main.lua", "local h = require 'lib.helper'\nlocal d = tally.load_json('data.json')\n"
                                  "return { name = 'main', process = function(m) m.properties.mark = h.mark .. d.v; return m end }\n");
    link_at(base, "current", real);
    char *dir = join(base, "current");
    tally_t *t;
    int rc = open_rules(dir, &t);
    if (rc) fprintf(stderr, "  %s\n", tally_errmsg(NULL));
    REQUIRE(rc == TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "linked", "{}"), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 10000), TALLY_OK);
    char *file = tu_path("rule-files.ndjson");
    char *got = tu_read_file(file, NULL);
    CHECK_CONTAINS(got, "\"mark\":\"ok2\"");
    free(got);
    free(file);
    free(dir);
    free(base);
    free(real);
}

/* Regular files in subfolders below the folder still load: confinement is not "flat folders only". */
TEST(module_in_a_real_subfolder_still_loads)
{
    char *dir = fresh_dir("rules");
    char *sub = join(dir, "lib");
    mkdir(sub, 0755);
    write_at(sub, "util.lua", "return { n = 3 }\n");
    write_at(dir, "10_main.lua", "local u = require 'lib.util'\n"
                                 "return { name = 'main', process = function(m) m.properties.n = u.n; return m end }\n");
    tally_t *t;
    REQUIRE(open_rules(dir, &t) == TALLY_OK);
    tally_close(t, 0);
    free(sub);
    free(dir);
}
