/* bmxq: the queue tool (bmxq(1)), like mailq/postqueue and smtpctl. It asks
 * the running daemon over its control socket (control.c; the protocol is in
 * control_proto.h), and when the daemon is stopped it reads the queue
 * itself, read-only, for list, show and stats: the reports come from the
 * same code (control_proto.c) either way. */
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "config.h"
#include "control_proto.h"
#include "log.h"
#include "queue.h"

#define DEFAULT_CONFIG "/etc/backupmx/backupmx.conf"
#define EXIT_USAGE 2
#define ANSWER_SECONDS 300         /* longest silence of the daemon */
#define OUT_CHUNK (64 * 1024)      /* stdout is written in pieces this big */

enum cmd_kind { CMD_LIST, CMD_SHOW, CMD_STATS, CMD_ACTION };

/* One command line, as a request for the daemon and as what the offline
 * reader needs. */
struct job {
    enum cmd_kind kind;
    char line[CTL_LINE_MAX];     /* the request line, without newline */
    enum report_fmt fmt;         /* list */
    const char *domain;          /* list filter, or NULL */
    const char *id;              /* show */
    bool whole;                  /* show -b */
};

static void usage(FILE *f, int status)
{
    fprintf(f,
            "usage: bmxq [-f CONFIG] [-V] [COMMAND [ARGS]]\n"
            "  list [--json] [DOMAIN]   the queue, like mailq (the default)\n"
            "  show [-b] ID             envelope and headers (-b: the whole "
            "message)\n"
            "  flush [ID|DOMAIN|all]    make mail due now\n"
            "  hold ID|all              keep mail back until released\n"
            "  release ID|all           let held mail go, due now\n"
            "  delete ID|all|DOMAIN     remove mail without a bounce\n"
            "  bounce ID                return a message to its sender now\n"
            "  stats                    counters of the queue and the "
            "deliveries\n");
    exit(status);
}

static void usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "bmxq: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    usage(stderr, EXIT_USAGE);
}

/* ---- the command line ------------------------------------------------------ */

/* An argument for the request line: printable ASCII, no spaces. Something
 * with the shape of a queue id is upper-cased (ids are); anything else is
 * left as typed (domains are compared ignoring case). */
static const char *norm_arg(char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CTL_ARG_MAX)
        usage_error("bad argument: %s", s);
    bool alnum = true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f)
            usage_error("bad argument: %s", s);
        alnum &= isalnum(c) != 0;
    }
    for (size_t i = 0; alnum && n == QUEUE_ID_LEN && i < n; i++)
        s[i] = (char)toupper((unsigned char)s[i]);
    return s;
}

static void set_line(struct job *j, const char *verb, const char *a,
                     const char *b)
{
    snprintf(j->line, sizeof j->line, "%s%s%s%s%s", verb, a ? " " : "",
             a ? a : "", b ? " " : "", b ? b : "");
}

static void parse_list(int argc, char **argv, struct job *j)
{
    j->kind = CMD_LIST;
    bool opts = true;
    for (int i = 1; i < argc; i++) {
        if (opts && (strcmp(argv[i], "--json") == 0 ||
                     strcmp(argv[i], "-j") == 0))
            j->fmt = REPORT_JSON;
        else if (opts && strcmp(argv[i], "--") == 0)
            opts = false;
        else if (opts && argv[i][0] == '-')
            usage_error("list: unknown option %s", argv[i]);
        else if (!j->domain)
            j->domain = norm_arg(argv[i]);
        else
            usage_error("list: one domain at most (%s)", argv[i]);
    }
    set_line(j, "list", j->domain, j->fmt == REPORT_JSON ? "json" : NULL);
}

static void parse_show(int argc, char **argv, struct job *j)
{
    j->kind = CMD_SHOW;
    bool opts = true;
    for (int i = 1; i < argc; i++) {
        if (opts && strcmp(argv[i], "-b") == 0)
            j->whole = true;
        else if (opts && strcmp(argv[i], "--") == 0)
            opts = false;
        else if (opts && argv[i][0] == '-')
            usage_error("show: unknown option %s", argv[i]);
        else if (!j->id)
            j->id = norm_arg(argv[i]);
        else
            usage_error("show: one queue id only (%s)", argv[i]);
    }
    if (!j->id)
        usage_error("%s", "show: which message? (show [-b] ID)");
    set_line(j, "show", j->id, j->whole ? "body" : NULL);
}

struct command {
    const char *name;
    int min, max;                /* arguments, for the actions */
    const char *args;            /* for messages */
};

static const struct command actions[] = {
    { "flush", 0, 1, "[ID|DOMAIN|all]" },
    { "hold", 1, 1, "ID|all" },
    { "release", 1, 1, "ID|all" },
    { "delete", 1, 1, "ID|all|DOMAIN" },
    { "bounce", 1, 1, "ID" },
};

static void parse_job(int argc, char **argv, struct job *j)
{
    memset(j, 0, sizeof *j);
    const char *cmd = argc > 0 ? argv[0] : "list";
    if (argc == 0 || strcmp(cmd, "list") == 0) {
        parse_list(argc, argv, j);
        return;
    }
    if (strcmp(cmd, "show") == 0) {
        parse_show(argc, argv, j);
        return;
    }
    if (strcmp(cmd, "stats") == 0) {
        if (argc != 1)
            usage_error("%s", "stats takes no arguments");
        j->kind = CMD_STATS;
        set_line(j, "stats", NULL, NULL);
        return;
    }
    for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++) {
        const struct command *c = &actions[i];
        if (strcmp(cmd, c->name) != 0)
            continue;
        if (argc - 1 < c->min || argc - 1 > c->max) {
            fprintf(stderr, "bmxq: usage: bmxq %s %s\n", c->name, c->args);
            exit(EXIT_USAGE);
        }
        j->kind = CMD_ACTION;
        set_line(j, c->name, argc > 1 ? norm_arg(argv[1]) : NULL, NULL);
        return;
    }
    usage_error("unknown command: %s", cmd);
}

/* ---- output ------------------------------------------------------------------ */

static void out_write(struct evbuffer *out, bool all)
{
    while (evbuffer_get_length(out) >= (all ? 1 : OUT_CHUNK)) {
        if (evbuffer_write(out, STDOUT_FILENO) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "bmxq: stdout: %s\n", strerror(errno));
            exit(EXIT_FAILURE);
        }
    }
}

/* ---- talking to the daemon ------------------------------------------------------ */

static void denied(const char *path)
{
    fprintf(stderr, "bmxq: permission denied: %s admits only root, the "
            "daemon's user and members of its group\n", path);
    exit(EX_NOPERM);
}

/* The connected socket; -1 when the daemon is not running. */
static int ctl_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "bmxq: %s: path too long\n", path);
        exit(EX_CONFIG);
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "bmxq: socket: %s\n", strerror(errno));
        exit(EXIT_FAILURE);
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        struct timeval tv = { ANSWER_SECONDS, 0 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        return fd;
    }
    int err = errno;
    close(fd);
    if (err == ENOENT || err == ECONNREFUSED || err == ENOTDIR)
        return -1;
    if (err == EACCES || err == EPERM)
        denied(path);
    fprintf(stderr, "bmxq: %s: %s\n", path, strerror(err));
    exit(EX_TEMPFAIL);
}

/* The exit status for the terminator line LINE ("ok..." or "error ..."). */
static int terminator(const char *line, const char *path)
{
    if (strcmp(line, "ok") == 0 || strncmp(line, "ok ", 3) == 0)
        return 0;
    if (strncmp(line, "error ", 6) != 0) {
        fprintf(stderr, "bmxq: unexpected answer from backupmx: %.200s\n",
                line);
        return EXIT_FAILURE;
    }
    const char *why = line + 6;
    if (strcmp(why, "permission denied") == 0)
        denied(path);
    fprintf(stderr, "bmxq: %s\n", why);
    return EXIT_FAILURE;
}

/* Moves the complete lines of IN to OUT ("|" and "+" data lines); returns
 * the exit status once the terminator came, -1 while it has not. *SCANNED
 * is how much of IN is known to hold no newline. */
static int take_lines(struct evbuffer *in, struct evbuffer *out,
                      size_t *scanned, const char *path)
{
    for (;;) {
        struct evbuffer_ptr start;
        evbuffer_ptr_set(in, &start, *scanned, EVBUFFER_PTR_SET);
        size_t eol = 0;
        struct evbuffer_ptr nl = evbuffer_search_eol(in, &start, &eol,
                                                     EVBUFFER_EOL_LF);
        if (nl.pos < 0) {
            *scanned = evbuffer_get_length(in);
            return -1;
        }
        *scanned = 0;
        size_t len = (size_t)nl.pos;          /* without the newline */
        char tag = 0;
        evbuffer_copyout(in, &tag, 1);
        if (tag == '|' || tag == '+') {
            evbuffer_drain(in, 1);
            evbuffer_remove_buffer(in, out, tag == '|' ? len : len - 1);
            if (tag == '+')
                evbuffer_drain(in, 1);
            out_write(out, false);
            continue;
        }
        char line[CTL_LINE_MAX + 1];
        size_t n = len < CTL_LINE_MAX ? len : CTL_LINE_MAX;
        evbuffer_remove(in, line, n);
        line[n] = '\0';
        return terminator(line, path);
    }
}

static int run_online(int fd, const struct job *j, const char *path)
{
    char req[CTL_LINE_MAX + 2];
    int n = snprintf(req, sizeof req, "%s\n", j->line);
    /* A refused caller may find the connection closed already: its reason
     * is still there to be read, so a failed send is not the end. */
    int sent_errno = send(fd, req, (size_t)n, MSG_NOSIGNAL) == n ? 0 : errno;
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    if (!in || !out) {
        fprintf(stderr, "bmxq: out of memory\n");
        return EXIT_FAILURE;
    }
    size_t scanned = 0;
    int rc = -1;
    while (rc < 0) {
        int got = evbuffer_read(in, fd, 65536);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fprintf(stderr, "bmxq: backupmx did not answer for %d seconds\n",
                    ANSWER_SECONDS);
            rc = EX_TEMPFAIL;
        } else if (got <= 0) {
            int err = got < 0 ? errno : sent_errno;
            fprintf(stderr, "bmxq: connection to backupmx lost%s%s\n",
                    err ? ": " : "", err ? strerror(err) : "");
            rc = EX_TEMPFAIL;
        } else
            rc = take_lines(in, out, &scanned, path);
    }
    out_write(out, true);
    evbuffer_free(in);
    evbuffer_free(out);
    close(fd);
    return rc;
}

/* ---- reading the queue with the daemon stopped ---------------------------------- */

struct offline {
    const struct job *j;
    struct report_list list;
    struct report_stats stats;
    struct evbuffer *out;
};

static int offline_cb(const struct queue_envelope *env, void *arg)
{
    struct offline *o = arg;
    if (o->j->kind == CMD_LIST) {
        report_list_add(&o->list, env, o->out);
        out_write(o->out, false);
    } else
        report_stats_add(&o->stats, env);
    return 0;
}

static int offline_show(struct queue *q, const struct job *j,
                        struct evbuffer *out)
{
    struct queue_envelope env;
    struct evbuffer *body = evbuffer_new();
    int rc = body ? queue_get(q, j->id, &env, body) : -1;
    if (rc == 0) {
        report_show(&env, body, j->whole, NULL, NULL, out);
        queue_envelope_free(&env);
    } else if (rc == 1)
        fprintf(stderr, "bmxq: no such message: %s\n", j->id);
    else
        fprintf(stderr, "bmxq: cannot read message %s\n", j->id);
    if (body)
        evbuffer_free(body);
    return rc == 0 ? 0 : EXIT_FAILURE;
}

/* The queue of a daemon that never ran is empty; anything else is opened
 * read-only (which refuses while a daemon holds it, or after a crash). */
static struct queue *offline_open(const char *spool, bool *never)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/db/lock", spool);
    *never = false;
    if (stat(path, &st) != 0 && errno == ENOENT) {
        snprintf(path, sizeof path, "%s/db", spool);
        if (stat(path, &st) != 0 && errno == ENOENT) {
            *never = true;
            return NULL;
        }
    }
    if (access(path, R_OK) != 0 && (errno == EACCES || errno == EPERM)) {
        fprintf(stderr, "bmxq: permission denied: cannot read %s\n", path);
        exit(EX_NOPERM);
    }
    struct queue_opts qo = { .readonly = true };
    struct queue *q = queue_open(spool, &qo);
    if (!q) {
        fprintf(stderr, "bmxq: backupmx is not running and its queue in %s "
                "cannot be read (see above)\n", spool);
        exit(EX_TEMPFAIL);
    }
    return q;
}

static int run_offline(const struct bmx_config *cfg, const struct job *j)
{
    struct offline o = { .j = j, .out = evbuffer_new() };
    if (!o.out) {
        fprintf(stderr, "bmxq: out of memory\n");
        return EXIT_FAILURE;
    }
    bool never;
    struct queue *q = offline_open(cfg->spool, &never);
    int rc = 0;
    report_list_init(&o.list, j->fmt, j->domain, NULL, NULL);
    report_stats_init(&o.stats, NULL, NULL);
    if (j->kind == CMD_SHOW) {
        if (q)
            rc = offline_show(q, j, o.out);
        else {
            fprintf(stderr, "bmxq: no such message: %s\n", j->id);
            rc = EXIT_FAILURE;
        }
    } else {
        if (q && queue_walk(q, offline_cb, &o) != 0) {
            fprintf(stderr, "bmxq: some of the queue could not be read "
                    "(see above)\n");
            rc = EXIT_FAILURE;
        }
        if (j->kind == CMD_LIST)
            report_list_end(&o.list, o.out);
        else
            report_stats_end(&o.stats, NULL, (int64_t)time(NULL), o.out);
    }
    out_write(o.out, true);
    report_stats_free(&o.stats);
    evbuffer_free(o.out);
    if (q)
        queue_close(q);
    return rc;
}

/* ---- main ----------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *file = DEFAULT_CONFIG;
    int c;
    while ((c = getopt(argc, argv, "+f:hV")) != -1) {
        switch (c) {
        case 'f': file = optarg; break;
        case 'h': usage(stdout, 0); break;
        case 'V': printf("bmxq %s\n", BMX_VERSION); return 0;
        default: usage(stderr, EXIT_USAGE);
        }
    }
    struct job j;
    parse_job(argc - optind, argv + optind, &j);
    log_init("bmxq", true, false);
    struct bmx_config *cfg = config_load(file, stderr);
    if (!cfg)
        return EX_CONFIG;
    int rc;
    int fd = ctl_connect(cfg->control);
    if (fd >= 0)
        rc = run_online(fd, &j, cfg->control);
    else if (j.kind != CMD_ACTION)
        rc = run_offline(cfg, &j);
    else {
        fprintf(stderr, "bmxq: backupmx is not running\n");
        rc = EX_TEMPFAIL;
    }
    config_free(cfg);
    return rc;
}
