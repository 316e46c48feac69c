/* fetchd: drains remote POP3/IMAP mailboxes (the backup MX's catch-all, or
 * any server) into local delivery, exactly once.
 *
 *   fetchd [-1|-d] [-n] [-v] [-s] [-f FILE]    fetchd -V
 *
 * -1 (the default) does one pass over every account and exits: 0 when all
 * went well, 1 when some account failed, 75 when another fetchd holds the
 * lock (nothing was touched). -d stays in the foreground and polls every
 * `interval`, and sooner through IMAP IDLE where offered; SIGUSR1 polls
 * at once, SIGTERM finishes the message in hand and exits. -n only checks
 * the configuration. Logs go to stderr, or with -s to syslog (mail). */
#include "account.h"
#include "fetchd_conf.h"
#include "lock.h"
#include "log.h"
#include "state_bdb.h"

#include <errno.h>
#include <libetpan/libetpan.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef BMX_VERSION
#define BMX_VERSION "unknown"
#endif

#define DEFAULT_CONF "/etc/backupmx/fetchd.conf"
#define EXIT_BUSY 75
#define IDLE_MAX (29 * 60)

static void usage(void)
{
    fprintf(stderr, "usage: fetchd [-1|-d] [-n] [-v] [-s] [-f FILE]\n"
                    "       fetchd -V\n");
    exit(1);
}

static void on_stop(int sig)
{
    (void)sig;
    fetchd_stopping = 1;
}

static void on_wakeup(int sig)
{
    (void)sig;
    fetchd_wakeup = 1;
}

static void signals(void)
{
    struct sigaction sa = { .sa_handler = on_stop };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_wakeup;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

static int make_state_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : (errno = ENOTDIR, -1);
    return mkdir(dir, 0700);
}

/* Every account once. Returns the number that failed. */
static int one_pass(const struct fd_config *c, struct state *st)
{
    int failed = 0;
    for (size_t i = 0; i < c->naccounts && !fetchd_stopping; i++)
        if (account_run(&c->accounts[i], st, NULL) != 0)
            failed++;
    state_checkpoint(st);
    return failed;
}

/* Daemon: a full pass every interval; in between, IMAP sessions idle and
 * an account whose server reports news is drained at once. */
static void daemon_loop(const struct fd_config *c, struct state *st)
{
    size_t n = c->naccounts;
    struct fetcher **sess = calloc(n, sizeof *sess);
    bool *news = calloc(n, sizeof *news);
    struct pollfd *pfd = calloc(n, sizeof *pfd);
    if (sess == NULL || news == NULL || pfd == NULL) {
        log_err("out of memory");
        goto out;
    }
    time_t next = 0;
    log_info("daemon started: %zu accounts, interval %llds", n, (long long)c->interval);
    while (!fetchd_stopping) {
        bool full = time(NULL) >= next || fetchd_wakeup;
        fetchd_wakeup = 0;
        for (size_t i = 0; i < n && !fetchd_stopping; i++) {
            if (!full && !news[i])
                continue;
            account_close(sess[i]);
            sess[i] = NULL;
            news[i] = false;
            account_run(&c->accounts[i], st, &sess[i]);
        }
        if (full) {
            state_checkpoint(st);
            next = time(NULL) + c->interval;
        }
        /* Wait for the next pass, news on an idling session, or a signal. */
        time_t idle_until = time(NULL) + IDLE_MAX;
        while (!fetchd_stopping && !fetchd_wakeup) {
            time_t now = time(NULL);
            if (now >= next || now >= idle_until)
                break;
            size_t k = 0;
            for (size_t i = 0; i < n; i++)
                if (sess[i] != NULL)
                    pfd[k++] = (struct pollfd){ sess[i]->idle_fd, POLLIN, 0 };
            int r = poll(pfd, k, 1000);
            if (r <= 0)
                continue;
            bool any = false;
            for (size_t i = 0, j = 0; i < n; i++) {
                if (sess[i] == NULL)
                    continue;
                if (pfd[j++].revents != 0) {
                    news[i] = any = true;
                    log_debug("%s: the server reports news", c->accounts[i].name);
                }
            }
            if (any)
                break;
        }
        if (time(NULL) >= idle_until)
            for (size_t i = 0; i < n; i++)
                news[i] |= sess[i] != NULL;   /* re-IDLE within 29 minutes */
    }
    log_info("daemon stopping");
out:
    for (size_t i = 0; sess != NULL && i < n; i++)
        account_close(sess[i]);
    free(sess);
    free(news);
    free(pfd);
}

int main(int argc, char **argv)
{
    const char *file = DEFAULT_CONF;
    bool daemon = false, check = false, verbose = false, use_syslog = false;
    int ch;
    while ((ch = getopt(argc, argv, "1dnvsf:Vh")) != -1) {
        switch (ch) {
        case '1': daemon = false; break;
        case 'd': daemon = true; break;
        case 'n': check = true; break;
        case 'v': verbose = true; break;
        case 's': use_syslog = true; break;
        case 'f': file = optarg; break;
        case 'V':
            printf("fetchd %s (libetpan %d.%d)\n", BMX_VERSION, libetpan_get_version_major(),
                   libetpan_get_version_minor());
            return 0;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    struct fd_config *c = fd_config_load(file, stderr);
    if (c == NULL)
        return 1;
    if (check) {
        fd_config_free(c);
        return 0;
    }
    log_init("fetchd", !use_syslog, verbose);
    signals();
    if (make_state_dir(c->state) != 0) {
        log_err("state directory %s: %s", c->state, strerror(errno));
        fd_config_free(c);
        return 1;
    }
    int busy;
    int lockfd = lock_take(c->state, &busy);
    if (lockfd < 0) {
        if (busy)
            log_warn("another fetchd (pid %ld) is running with state %s: not starting",
                     lock_holder(c->state), c->state);
        else
            log_err("lock file in %s: %s", c->state, strerror(errno));
        fd_config_free(c);
        return busy ? EXIT_BUSY : 1;
    }
    char err[512];
    struct state *st = state_open(c->state, err, sizeof err);
    if (st == NULL) {
        log_err("%s", err);
        fd_config_free(c);
        close(lockfd);
        return 1;
    }
    int rc = 0;
    if (daemon)
        daemon_loop(c, st);
    else
        rc = one_pass(c, st) > 0 ? 1 : 0;
    state_close(st);
    fd_config_free(c);
    close(lockfd);
    return rc;
}
