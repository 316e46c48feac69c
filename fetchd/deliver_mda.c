/* Delivery through a local program (mda:COMMAND): the command's words are
 * run with execvp, no shell, %T replaced by the recipient, %F by the
 * sender ("" for <>) and %% by %. With %T the program runs once per
 * recipient, otherwise once for all. The message goes to its standard
 * input with LF line ends (as procmail or maildrop expect).
 * Exit 0: delivered. Exit 75 (EX_TEMPFAIL), death by a signal, or a
 * program that cannot be run: temporary, the message stays on the server.
 * Any other exit status: permanent failure (on_reject decides). */
#include "deliver.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

static void run_one(const struct fd_target *t, const char *rcpt, const char *sender,
                    const char *msg, size_t len, struct dresult *res)
{
    char **argv = calloc(t->argc + 1, sizeof *argv);
    for (size_t i = 0; argv != NULL && i < t->argc; i++)
        if ((argv[i] = expand(t->argv[i], rcpt, sender)) == NULL)
            goto oom;
    if (argv == NULL)
        goto oom;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "pipe: %s", strerror(errno));
        goto out;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        dup2(fds[0], 0);
        close_range(3, ~0U, 0);     /* not the POP3/IMAP connection, not the state */
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], argv);
        fprintf(stderr, "fetchd: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[0]);
    int werr = write_lf(fds[1], msg, len);
    close(fds[1]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && werr == 0) {
        res->st = DS_OK;
        snprintf(res->reply, sizeof res->reply, "%s exited 0", t->argv[0]);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "%s did not read the whole message", t->argv[0]);
    } else if (WIFSIGNALED(status)) {
        res->st = DS_TEMP;
        snprintf(res->reply, sizeof res->reply, "%s killed by signal %d", t->argv[0],
                 WTERMSIG(status));
    } else {
        int code = WEXITSTATUS(status);
        res->st = code == 75 || code == 127 ? DS_TEMP : DS_PERM;
        snprintf(res->reply, sizeof res->reply, "%s exited %d%s", t->argv[0], code,
                 code == 75 ? " (temporary failure)" : code == 127 ? " (cannot run it)" : "");
    }
    goto out;
oom:
    res->st = DS_TEMP;
    snprintf(res->reply, sizeof res->reply, "out of memory");
out:
    for (size_t i = 0; argv != NULL && i < t->argc; i++)
        free(argv[i]);
    free(argv);
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
