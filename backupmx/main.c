/* backupmx: the secondary MX daemon. Reads the config, binds the listeners
 * as root, drops privileges, opens the queue and runs one event loop. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "policy.h"
#include "queue.h"
#include "smtp_server.h"
#include "tls.h"
#include "verify.h"
#include "dns.h"
#include "scheduler.h"
#include "control.h"
#include "catchall_writer.h"
#include "mail_server.h"
#include "maildir.h"

#define DEFAULT_CONFIG "/etc/backupmx/backupmx.conf"
#define FALLBACK_USER "nobody"

struct opts {
    const char *file;
    bool foreground, check, verbose;
};

static void usage(void)
{
    fprintf(stderr, "usage: backupmx [-d] [-n] [-v] [-V] [-f FILE]\n");
    exit(2);
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    int c;
    o->file = DEFAULT_CONFIG;
    while ((c = getopt(argc, argv, "dnvVf:")) != -1) {
        switch (c) {
        case 'd': o->foreground = true; break;
        case 'n': o->check = true; break;
        case 'v': o->verbose = true; break;
        case 'f': o->file = optarg; break;
        case 'V': printf("backupmx %s\n", BMX_VERSION); exit(0);
        default: usage();
        }
    }
    if (optind != argc)
        usage();
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static uid_t chown_uid;
static gid_t chown_gid;

static int chown_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    if (lchown(path, chown_uid, chown_gid) != 0)
        log_warn("chown %s: %s", path, strerror(errno));
    return 0;
}

/* The spool must belong to the user the daemon runs as. A spool left by a
 * run under another user is handed over as a whole. */
static int prepare_spool(const char *spool, uid_t uid, gid_t gid)
{
    if (mkdir(spool, 0700) != 0 && errno != EEXIST) {
        log_err("cannot create spool %s: %s", spool, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(spool, &st) != 0 || !S_ISDIR(st.st_mode)) {
        log_err("spool %s is not a directory", spool);
        return -1;
    }
    if (geteuid() != 0 || (st.st_uid == uid && st.st_gid == gid))
        return 0;
    chown_uid = uid;
    chown_gid = gid;
    return nftw(spool, chown_one, 32, FTW_PHYS) == 0 ? 0 : -1;
}

/* Sessions never run as root: with no `user`, root falls back to nobody. */
static int drop_privileges(const struct bmx_config *cfg)
{
    if (geteuid() != 0)
        return prepare_spool(cfg->spool, geteuid(), getegid());
    const char *name = cfg->user ? cfg->user : FALLBACK_USER;
    if (cfg->user == NULL)
        log_warn("no user configured: running as %s", FALLBACK_USER);
    struct passwd *pw = getpwnam(name);
    if (pw == NULL) {
        log_err("user %s: no such user", name);
        return -1;
    }
    if (prepare_spool(cfg->spool, pw->pw_uid, pw->pw_gid) != 0)
        return -1;
    if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        log_err("cannot change to user %s: %s", name, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) {
        log_err("privileges were not dropped");
        return -1;
    }
    return 0;
}

/* Catch-all Maildirs are created as the user that will write them. */
static int prepare_mailboxes(const struct bmx_config *cfg)
{
    for (size_t i = 0; i < cfg->nmailboxes; i++) {
        const struct bmx_mailbox *m = &cfg->mailboxes[i];
        char err[512];
        if (maildir_ensure(m->maildir, err, sizeof err) != 0) {
            log_err("mailbox %s: %s", m->name, err);
            return -1;
        }
        maildir_clean_tmp(m->maildir);
    }
    return 0;
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    log_info("signal %d: shutting down", (int)sig);
    event_base_loopbreak(arg);
}

static int run(const struct opts *o, struct bmx_config *cfg)
{
    int rc = 1;
    struct smtp_server srv = { .cfg = cfg };
    struct event *sigterm = NULL, *sigint = NULL;
    struct dns *dns = NULL;
    struct control *ctl = NULL;
    struct mail_server *ms = NULL;
    srv.base = event_base_new();
    if (srv.base == NULL)
        return 1;
    if (cfg->tls.enabled) {
        char err[512];
        srv.tls = tls_server_ctx(cfg->tls.cert, cfg->tls.key, cfg->tls.ciphers, err, sizeof err);
        if (srv.tls == NULL) {
            log_err("tls: %s", err);
            goto out;
        }
    }
    if (smtp_server_bind(&srv) != 0 || (ms = mail_server_new(srv.base, cfg, srv.tls)) == NULL
        || drop_privileges(cfg) != 0 || prepare_mailboxes(cfg) != 0)
        goto out;
    if (!o->foreground && daemon(0, 0) != 0) {
        log_err("daemon: %s", strerror(errno));
        goto out;
    }
    struct queue_opts qo = { .inline_max = 0, .cache_bytes = 0 };
    srv.queue = queue_open(cfg->spool, &qo);
    if (srv.queue == NULL || queue_attach(srv.queue, srv.base) != 0)
        goto out;
    if (cfg->nmailboxes > 0 && (srv.cawriter = ca_writer_new(srv.base)) == NULL)
        goto out;
    srv.policy = policy_new(cfg);
    srv.verify = verify_new(srv.base, cfg, srv.queue);
    dns = dns_new(srv.base, cfg);
    srv.sched = dns ? scheduler_new(srv.base, cfg, srv.queue, dns) : NULL;
    ctl = srv.sched ? control_new(srv.base, cfg, srv.queue, srv.sched) : NULL;
    sigterm = evsignal_new(srv.base, SIGTERM, stop_cb, srv.base);
    sigint = evsignal_new(srv.base, SIGINT, stop_cb, srv.base);
    if (srv.policy == NULL || srv.verify == NULL || srv.sched == NULL || ctl == NULL || sigterm == NULL || sigint == NULL
        || evsignal_add(sigterm, NULL) != 0 || evsignal_add(sigint, NULL) != 0)
        goto out;
    log_info("daemon started -- version %s, configuration %s", BMX_VERSION, cfg->file);
    event_base_dispatch(srv.base);
    rc = 0;
out:
    smtp_server_shutdown(&srv);
    mail_server_free(ms);
    /* Copies being written finish; their callbacks free dead sessions. */
    ca_writer_free(srv.cawriter);
    /* Delivery stops before the loop runs again: a NONBLOCK pass keeps going
     * while callbacks are active, and would drain the whole queue first. */
    control_free(ctl);
    scheduler_free(srv.sched);
    dns_free(dns);
    /* Let the last group commit finish: its callbacks free dead sessions. */
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
    if (srv.verify != NULL) {
        verify_free(srv.verify);
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
    }
    if (srv.queue != NULL) {
        struct queue_stats st;
        queue_get_stats(srv.queue, &st);
        log_info("queue: %llu commits, %llu log flushes (largest batch %llu, %.3fs in flushes)",
                 (unsigned long long)st.commits, (unsigned long long)st.flushes,
                 (unsigned long long)st.max_batch, (double)st.flush_usec / 1e6);
        queue_close(srv.queue);
    }
    policy_free(srv.policy);
    if (sigterm != NULL)
        event_free(sigterm);
    if (sigint != NULL)
        event_free(sigint);
    SSL_CTX_free(srv.tls);
    event_base_free(srv.base);
    log_info("daemon stopped");
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o = { 0 };
    parse_args(argc, argv, &o);
    struct bmx_config *cfg = config_load(o.file, stderr);
    if (cfg == NULL)
        return 1;
    if (o.check) {
        config_free(cfg);
        return 0;
    }
    log_init("backupmx", o.foreground, o.verbose);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    int rc = run(&o, cfg);
    config_free(cfg);
    return rc;
}
