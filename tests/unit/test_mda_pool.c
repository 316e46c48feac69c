/* fetchd mda: delivery programs started side by side (deliver.c and
 * deliver_mda.c compiled in, SMTP stubbed out): exit status to outcome,
 * a program that cannot run, the limit of programs at once, one program
 * for every recipient or one per recipient with %T, a program that does
 * not read its message, a script without #!. Runs real /bin/sh programs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/stat.h>

#include "../../fetchd/deliver.c"
#include "../../fetchd/deliver_mda.c"

/* deliver.c's other back end, never used here. */
struct smtp_client *smtp_client_new(const struct fd_target *t, int timeout)
{
    (void)t;
    (void)timeout;
    return NULL;
}

void smtp_client_free(struct smtp_client *c)
{
    (void)c;
}

int smtp_deliver(struct smtp_client *c, const char *sender, char *const *rcpts, size_t n,
                 const char *msg, size_t len, struct dresult *res)
{
    (void)c, (void)sender, (void)rcpts, (void)n, (void)msg, (void)len, (void)res;
    return -1;
}

static const char MSG[] = "Subject: t\r\n\r\nbody\r\n";
static char *one_rcpt[] = { "u@example.org" };

/* mda:/bin/sh -c SCRIPT sh [%T] */
static struct fd_target target(char **argv, size_t argc)
{
    return (struct fd_target){ .kind = DELIVER_MDA, .argv = argv, .argc = argc, .spec = "mda:" };
}

struct job {
    struct dmsg dm;
    struct dresult res[3];
};

static void start(struct deliverer *d, struct job *j, char *const *rcpts, size_t n)
{
    *j = (struct job){ .dm.res = j->res };
    assert_int_equal(deliver_start(d, &j->dm, "s@remote.test", rcpts, n, MSG, sizeof MSG - 1), 0);
}

/* Collects every started message; returns how many. */
static int collect_all(struct deliverer *d)
{
    int k = 0;
    while (deliver_finished(d, true) != NULL)
        k++;
    return k;
}

static void test_exit_status_to_outcome(void **state)
{
    (void)state;
    char *scripts[] = { "cat >/dev/null", "cat >/dev/null; exit 75", "cat >/dev/null; exit 3",
                        "kill -9 $$", "exit 127" };
    enum dstatus want[] = { DS_OK, DS_TEMP, DS_PERM, DS_TEMP, DS_TEMP };
    struct fd_target t[5];
    char *argv[5][3];
    struct deliverer *d[5];
    struct job j[5];
    for (int i = 0; i < 5; i++) {
        argv[i][0] = "/bin/sh";
        argv[i][1] = "-c";
        argv[i][2] = scripts[i];
        t[i] = target(argv[i], 3);
        d[i] = deliver_new(&t[i], 10, 4);
        assert_non_null(d[i]);
        start(d[i], &j[i], one_rcpt, 1);
    }
    for (int i = 0; i < 5; i++) {
        assert_ptr_equal(deliver_finished(d[i], true), &j[i].dm);
        assert_int_equal(j[i].res[0].st, want[i]);
        assert_null(deliver_finished(d[i], true));
        deliver_free(d[i]);
    }
    assert_non_null(strstr(j[3].res[0].reply, "killed by signal 9"));
    assert_non_null(strstr(j[4].res[0].reply, "cannot run it"));
}

static void test_program_that_cannot_run(void **state)
{
    (void)state;
    char *argv[] = { "no-such-program-for-fetchd-tests" };
    struct fd_target t = target(argv, 1);
    struct deliverer *d = deliver_new(&t, 10, 2);
    struct job j;
    start(d, &j, one_rcpt, 1);
    assert_ptr_equal(deliver_finished(d, false), &j.dm);
    assert_int_equal(j.res[0].st, DS_TEMP);
    assert_non_null(strstr(j.res[0].reply, "cannot run no-such-program-for-fetchd-tests"));
    deliver_free(d);
}

/* No #! line: run by /bin/sh, as execvp did (posix_spawnp does not). */
static void test_script_without_interpreter_line(void **state)
{
    (void)state;
    char path[] = "/tmp/fetchd-mda-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char script[] = "cat >/dev/null; exit 3\n";
    assert_int_equal(write(fd, script, sizeof script - 1), (ssize_t)(sizeof script - 1));
    assert_int_equal(fchmod(fd, 0700), 0);
    close(fd);
    char *argv[] = { path };
    struct fd_target t = target(argv, 1);
    struct deliverer *d = deliver_new(&t, 10, 1);
    struct job j;
    start(d, &j, one_rcpt, 1);
    assert_ptr_equal(deliver_finished(d, true), &j.dm);
    unlink(path);
    assert_int_equal(j.res[0].st, DS_PERM);
    assert_non_null(strstr(j.res[0].reply, "exited 3"));
    deliver_free(d);
}

static void test_at_most_parallel_at_once(void **state)
{
    (void)state;
    char *argv[] = { "/bin/sh", "-c", "cat >/dev/null; sleep 0.2" };
    struct fd_target t = target(argv, 3);
    struct deliverer *d = deliver_new(&t, 10, 2);
    struct job j[5];
    start(d, &j[0], one_rcpt, 1);
    assert_false(deliver_full(d));
    start(d, &j[1], one_rcpt, 1);
    assert_true(deliver_full(d));
    assert_null(deliver_finished(d, false));
    /* A third waits for one of the two to exit. */
    start(d, &j[2], one_rcpt, 1);
    struct dmsg *first = deliver_finished(d, false);
    assert_true(first == &j[0].dm || first == &j[1].dm);
    start(d, &j[3], one_rcpt, 1);
    start(d, &j[4], one_rcpt, 1);
    assert_int_equal(1 + collect_all(d), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(j[i].res[0].st, DS_OK);
    deliver_free(d);
}

static void test_one_program_for_all_recipients(void **state)
{
    (void)state;
    char *argv[] = { "/bin/sh", "-c", "cat >/dev/null; exit 75" };
    char *rcpts[] = { "a@example.org", "b@example.org", "c@example.org" };
    struct fd_target t = target(argv, 3);
    struct deliverer *d = deliver_new(&t, 10, 3);
    struct job j;
    start(d, &j, rcpts, 3);
    assert_int_equal(collect_all(d), 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(j.res[i].st, DS_TEMP);
        assert_string_equal(j.res[i].reply, j.res[0].reply);
    }
    deliver_free(d);
}

static void test_one_program_per_recipient(void **state)
{
    (void)state;
    /* %T: b@ is refused for good, a@ and c@ take it; with room for two
     * programs, the third recipient's waits inside deliver_start. */
    char *argv[] = { "/bin/sh", "-c", "cat >/dev/null; sleep 0.1; test \"$1\" != b@example.org",
                     "sh", "%T" };
    char *rcpts[] = { "a@example.org", "b@example.org", "c@example.org" };
    struct fd_target t = target(argv, 5);
    struct deliverer *d = deliver_new(&t, 10, 2);
    struct job j;
    start(d, &j, rcpts, 3);
    assert_ptr_equal(deliver_finished(d, true), &j.dm);
    assert_int_equal(j.res[0].st, DS_OK);
    assert_int_equal(j.res[1].st, DS_PERM);
    assert_int_equal(j.res[2].st, DS_OK);
    assert_null(deliver_finished(d, true));
    deliver_free(d);
}

static void test_program_that_does_not_read(void **state)
{
    (void)state;
    char *argv[] = { "/bin/sh", "-c", "exit 0" };
    struct fd_target t = target(argv, 3);
    struct deliverer *d = deliver_new(&t, 10, 2);
    size_t len = 4u << 20;          /* far more than a pipe holds */
    char *big = malloc(len);
    assert_non_null(big);
    memset(big, 'x', len);
    struct job j = { .dm.res = j.res };
    assert_int_equal(deliver_start(d, &j.dm, "", one_rcpt, 1, big, len), 0);
    assert_ptr_equal(deliver_finished(d, true), &j.dm);
    assert_int_equal(j.res[0].st, DS_TEMP);
    assert_non_null(strstr(j.res[0].reply, "did not read the whole message"));
    deliver_free(d);
    free(big);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);       /* as fetchd does (main.c) */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exit_status_to_outcome),
        cmocka_unit_test(test_program_that_cannot_run),
        cmocka_unit_test(test_script_without_interpreter_line),
        cmocka_unit_test(test_at_most_parallel_at_once),
        cmocka_unit_test(test_one_program_for_all_recipients),
        cmocka_unit_test(test_one_program_per_recipient),
        cmocka_unit_test(test_program_that_does_not_read),
    };
    return cmocka_run_group_tests_name("mda_pool", tests, NULL, NULL);
}
