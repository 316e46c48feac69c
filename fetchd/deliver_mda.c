/* Delivery through a local program (mda:COMMAND): the command's words are
 * run with execvp, no shell, %T replaced by the recipient, %F by the
 * sender ("" for <>) and %% by %. With %T the program runs once per
 * recipient, otherwise once for all. The message goes to its standard
 * input with LF line ends (as procmail or maildrop expect).
 * Exit 0: delivered. Exit 75 (EX_TEMPFAIL), death by a signal, or a
 * program that cannot be run (posix_spawn fails, or exit 127): temporary,
 * the message stays on the server. Any other exit status: permanent
 * failure (on_reject decides).
 *
 * account.c starts the program(s) of a message through a pool
 * (mda_start) and goes on fetching; up to mda_concurrency programs run at
 * once, and a message is handed back once all of its programs exited.
 * mda_deliver runs one message to the end, for deliver_message. */
#include "deliver.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static char *expand(const char *word, const char *rcpt, const char *sender)
{
    size_t cap = strlen(word) + 1;
    for (const char *p = word; (p = strchr(p, '%')) != NULL; p++)
        cap += 256 + strlen(sender);
    char *out = malloc(cap), *o = out;
    if (out == NULL)
        return NULL;
    for (const char *p = word; *p; p++) {
        if (p[0] == '%' && p[1] == 'T' && rcpt != NULL) {
            o = stpcpy(o, rcpt);
            p++;
        } else if (p[0] == '%' && p[1] == 'F') {
            o = stpcpy(o, sender);
            p++;
        } else if (p[0] == '%' && p[1] == '%') {
            *o++ = '%';
            p++;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static bool uses_rcpt(const struct fd_target *t)
{
    for (size_t i = 0; i < t->argc; i++)
        if (strstr(t->argv[i], "%T") != NULL)
            return true;
    return false;
}

/* Writes MSG with CRLF turned into LF. */
static int write_lf(int fd, const char *msg, size_t len)
{
    char buf[65536];
    size_t o = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || o == sizeof buf) {
            for (size_t w = 0; w < o;) {
                ssize_t n = write(fd, buf + w, o - w);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    return -1;
                w += (size_t)n;
            }
            o = 0;
            if (i == len)
                break;
        }
        if (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n')
            continue;
        buf[o++] = msg[i];
    }
    return 0;
}

/* posix_spawnp of ARGV with FD0 as its standard input; 0 or an errno.
 * posix_spawn rather than fork: glibc clones without copying fetchd's
 * page tables (CLONE_VM|CLONE_VFORK), which matters at one program per
 * message. The program gets fds 0-2 only (not the POP3/IMAP connection,
 * not the state), SIGPIPE at its default (fetchd ignores it, and ignored
 * signals survive exec) and no blocked signal. (glibc leaves its two
 * internal signals, 32 and 33, ignored, as for popen and system.) */
static int spawn_fd0(char **argv, int fd0, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, pipe_only;
    sigemptyset(&none);
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    int rc = posix_spawn_file_actions_adddup2(&fa, fd0, 0);
    if (rc == 0)
        rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    if (rc == 0)
        rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    if (rc == 0)
        rc = posix_spawnattr_setsigdefault(&attr, &pipe_only);
    if (rc == 0)
        rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0)
        rc = posix_spawnp(pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return rc;
}

/* A script without #! (ENOEXEC): execvp ran it with /bin/sh, posix_spawnp
 * does not. sh -c 'exec "$0" "$@"' does, finding it in PATH like execvp. */
static int spawn_script(char **argv, int fd0, pid_t *pid)
{
    size_t n = 0;
    while (argv[n] != NULL)
        n++;
    char **sh = calloc(n + 4, sizeof *sh);
    if (sh == NULL)
        return ENOMEM;
    sh[0] = "/bin/sh";
    sh[1] = "-c";
    sh[2] = "exec \"$0\" \"$@\"";
    memcpy(sh + 3, argv, n * sizeof *argv);
    int rc = spawn_fd0(sh, fd0, pid);
    free(sh);
    return rc;
}

/* Starts ARGV with the read end of a pipe as its standard input and
 * returns the write end (-1 with RES filled when it could not start). */
static int spawn(char **argv, pid_t *pid, struct dresult *res)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "pipe: %s", strerror(errno));
        return -1;
    }
    int rc = spawn_fd0(argv, fds[0], pid);
    if (rc == ENOEXEC)
        rc = spawn_script(argv, fds[0], pid);
    close(fds[0]);
    if (rc != 0) {
        close(fds[1]);
        /* What exit 127 meant when the child exec'd by itself: temporary. */
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "cannot run %s: %s", argv[0], strerror(rc));
        return -1;
    }
    return fds[1];
}

/* The outcome from the program's wait status and whether it took the
 * whole message (WERR != 0: it did not). */
static void judge(const char *prog, int status, int werr, struct dresult *res)
{
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && werr == 0) {
        res->st = DS_OK;
        snprintf(res->reply, sizeof res->reply, "%s exited 0", prog);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "%s did not read the whole message", prog);
    } else if (WIFSIGNALED(status)) {
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "%s killed by signal %d", prog, WTERMSIG(status));
    } else {
        int code = WEXITSTATUS(status);
        res->st = code == 75 || code == 127 ? DS_TEMP : DS_PERM;
        snprintf(res->reply, sizeof res->reply, "%s exited %d%s", prog, code,
                 code == 75 ? " (temporary failure)" : code == 127 ? " (cannot run it)" : "");
    }
}

/* The command's words with %T, %F and %% expanded; NULL when out of
 * memory. */
static char **make_argv(const struct fd_target *t, const char *rcpt, const char *sender)
{
    char **argv = calloc(t->argc + 1, sizeof *argv);
    for (size_t i = 0; argv != NULL && i < t->argc; i++) {
        if ((argv[i] = expand(t->argv[i], rcpt, sender)) != NULL)
            continue;
        for (size_t k = 0; k < i; k++)
            free(argv[k]);
        free(argv);
        return NULL;
    }
    return argv;
}

static void free_argv(char **argv)
{
    for (size_t i = 0; argv != NULL && argv[i] != NULL; i++)
        free(argv[i]);
    free(argv);
}

/* Starts the program for RCPT (NULL: every recipient) and writes the
 * message to it; returns its pid, or -1 with RES filled. *WERR: it did not
 * take the whole message. */
static pid_t start_program(const struct fd_target *t, const char *rcpt, const char *sender,
                           const char *msg, size_t len, int *werr, struct dresult *res)
{
    char **argv = make_argv(t, rcpt, sender);
    if (argv == NULL) {
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "out of memory");
        return -1;
    }
    pid_t pid;
    int fd = spawn(argv, &pid, res);
    free_argv(argv);
    if (fd < 0)
        return -1;
    /* Blocks while the program reads a message larger than the pipe; with
     * several programs, the others go on meanwhile. */
    *werr = write_lf(fd, msg, len);
    close(fd);
    return pid;
}

static void run_one(const struct fd_target *t, const char *rcpt, const char *sender,
                    const char *msg, size_t len, struct dresult *res)
{
    int werr, status;
    pid_t pid = start_program(t, rcpt, sender, msg, len, &werr, res);
    if (pid < 0)
        return;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    judge(t->argv[0], status, werr, res);
}

/* Side by side: one slot per program that may run at once. */
struct mda_kid {
    pid_t pid;                  /* 0: a free slot */
    int werr;                   /* it did not take the whole message */
    struct dmsg *dm;
    size_t i, copies;           /* dm->res[i .. i + copies - 1] get its outcome */
    unsigned long seq;          /* order of start */
};

struct mda_pool {
    const struct fd_target *t;
    size_t max, running;
    unsigned long started;
    struct mda_kid kids[];
};

struct mda_pool *mda_pool_new(const struct fd_target *t, size_t max)
{
    if (max < 1)
        max = 1;
    struct mda_pool *p = calloc(1, sizeof *p + max * sizeof p->kids[0]);
    if (p == NULL)
        return NULL;
    p->t = t;
    p->max = max;
    return p;
}

/* The caller collects every message before; a program still running
 * here (an error path) is waited for all the same, so that none is left a
 * zombie or still writing when fetchd goes on or exits. */
void mda_pool_free(struct mda_pool *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->max; i++)
        while (p->kids[i].pid > 0 && waitpid(p->kids[i].pid, NULL, 0) < 0 && errno == EINTR)
            ;
    free(p);
}

static void settle_copies(struct dmsg *dm, size_t i, size_t copies)
{
    for (size_t k = 1; k < copies; k++)
        dm->res[i + k] = dm->res[i];
}

/* One program of DM has its outcome: the message is finished with its
 * last one. */
static void run_done(struct dmsg *dm, struct dlist *done)
{
    if (--dm->running == 0)
        dlist_push(done, dm);
}

static void start_one(struct mda_pool *p, struct dmsg *dm, const char *rcpt, const char *sender,
                      const char *msg, size_t len, size_t i, size_t copies)
{
    int werr;
    pid_t pid = start_program(p->t, rcpt, sender, msg, len, &werr, &dm->res[i]);
    if (pid < 0) {
        settle_copies(dm, i, copies);
        return;
    }
    struct mda_kid *k = p->kids;
    while (k->pid != 0)
        k++;
    *k = (struct mda_kid){ .pid = pid, .werr = werr, .dm = dm, .i = i, .copies = copies,
                           .seq = p->started++ };
    dm->running++;
    p->running++;
}

void mda_start(struct mda_pool *p, struct dmsg *dm, const char *sender, char *const *rcpts,
               size_t n, const char *msg, size_t len, struct dlist *done)
{
    bool each = uses_rcpt(p->t);
    /* Held until every program is started, so that a quick one does not
     * finish the message early. */
    dm->running = 1;
    for (size_t i = 0; i < (each ? n : 1); i++) {
        while (p->running == p->max)
            mda_reap(p, true, done);
        start_one(p, dm, each ? rcpts[i] : NULL, sender, msg, len, i, each ? 1 : n);
    }
    run_done(dm, done);
}

bool mda_full(const struct mda_pool *p)
{
    return p->running >= p->max;
}

static void kid_done(struct mda_pool *p, struct mda_kid *k, const struct dresult *res,
                     struct dlist *done)
{
    k->dm->res[k->i] = *res;
    settle_copies(k->dm, k->i, k->copies);
    run_done(k->dm, done);
    k->pid = 0;
    p->running--;
}

/* Waits for K's program (FLAGS: WNOHANG or 0); false while it runs. Only
 * our own pids, never -1, so that another pool or mda_deliver keep the
 * statuses of theirs. */
static bool reap_kid(struct mda_pool *p, struct mda_kid *k, int flags, struct dlist *done)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(k->pid, &status, flags)) < 0 && errno == EINTR)
        ;
    if (pid == 0)
        return false;
    struct dresult res;
    if (pid < 0) {
        /* Reaped by someone else (SIGCHLD ignored?): outcome unknown. */
        res.st = DS_TEMP;
        snprintf(res.reply, sizeof res.reply, "%s: lost track of it (%s)", p->t->argv[0],
                 strerror(errno));
    } else {
        judge(p->t->argv[0], status, k->werr, &res);
    }
    kid_done(p, k, &res, done);
    return true;
}

static size_t reap_ready(struct mda_pool *p, struct dlist *done)
{
    size_t got = 0;
    for (size_t i = 0; i < p->max; i++)
        if (p->kids[i].pid != 0 && reap_kid(p, &p->kids[i], WNOHANG, done))
            got++;
    return got;
}

static struct mda_kid *oldest(struct mda_pool *p)
{
    struct mda_kid *o = NULL;
    for (size_t i = 0; i < p->max; i++)
        if (p->kids[i].pid != 0 && (o == NULL || p->kids[i].seq < o->seq))
            o = &p->kids[i];
    return o;
}

/* When WAIT and none has exited, waits for the oldest: programs of one
 * target take about as long as each other, so it is usually the next to
 * exit anyway, and waiting for a given pid needs no SIGCHLD handling. */
size_t mda_reap(struct mda_pool *p, bool wait, struct dlist *done)
{
    if (reap_ready(p, done) == 0 && wait && p->running > 0) {
        reap_kid(p, oldest(p), 0, done);
        reap_ready(p, done);
    }
    return p->running;
}

int mda_deliver(const struct fd_target *t, const char *sender, char *const *rcpts, size_t n,
                const char *msg, size_t len, struct dresult *res)
{
    if (!uses_rcpt(t)) {
        run_one(t, NULL, sender, msg, len, &res[0]);
        for (size_t i = 1; i < n; i++)
            res[i] = res[0];
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        run_one(t, rcpts[i], sender, msg, len, &res[i]);
    return 0;
}
