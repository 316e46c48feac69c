/* The daemon's control socket (see control.h): accepts bmxq's connections,
 * checks who is calling, and answers one request line after another. Each
 * verb has a handler; replies are built by control_proto.c and framed by
 * ctl_frame. `list` and `stats` walk the queue in slices of CTL_SLICE
 * messages, one slice per pass of the event loop, and only while the
 * client's unsent output is below CTL_OUT_HIGH, so neither a big queue nor
 * a slow reader holds up the SMTP sessions. */
#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "control_proto.h"
#include "log.h"
#include "queue.h"
#include "scheduler.h"

#define CTL_MAX_CONNS 32
#define CTL_SLICE 200                  /* messages per pass of the loop */
#define CTL_OUT_HIGH (256 * 1024)      /* stop making output above this */
#define CTL_OUT_LOW (64 * 1024)        /* and go on below this */
#define CTL_IDLE_SECONDS 60            /* waiting for a request */
#define CTL_WRITE_SECONDS 600          /* a client that stopped reading */

enum conn_state {
    CONN_IDLE,                   /* waiting for a request line */
    CONN_LIST,                   /* streaming `list` */
    CONN_STATS,                  /* walking the queue for `stats` */
    CONN_CLOSING,                /* sending the last bytes, then closing */
};

struct ctl_conn {
    struct ctl_conn *next, **pprev;
    struct control *c;
    struct bufferevent *bev;
    enum conn_state state;
    bool eof;                    /* the client has no more to say */
    uid_t uid;                   /* the peer, for the log */
    pid_t pid;
    struct event *pump;          /* the next slice of a walk */
    char last[QUEUE_ID_LEN + 1]; /* where the walk goes on */
    struct evbuffer *text;       /* report output not yet framed */
    struct report_list list;
    struct report_stats stats;
};

struct control {
    struct event_base *base;
    const struct bmx_config *cfg;
    struct queue *q;
    struct scheduler *s;
    struct evconnlistener *lis;
    char *path;
    dev_t dev;                   /* the socket file we made */
    ino_t ino;
    uid_t uid;                   /* who we run as */
    gid_t gid;
    struct ctl_conn *conns;
    unsigned nconns;
};

/* ---- replies ------------------------------------------------------------ */

static struct evbuffer *conn_out(struct ctl_conn *k)
{
    return bufferevent_get_output(k->bev);
}

/* Frames whatever the handler put into k->text and ends the reply with
 * the terminator line "ok[ N]" or "error TEXT". */
static void reply_done(struct ctl_conn *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply_done(struct ctl_conn *k, const char *fmt, ...)
{
    struct evbuffer *out = conn_out(k);
    ctl_frame(out, k->text, true);
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\n", 1);
}

/* Reading goes on (and is thrown away) meanwhile: a socket closed with
 * unread data could reset the connection before the reply is read. */
static void conn_close_after_reply(struct ctl_conn *k)
{
    k->state = CONN_CLOSING;
    bufferevent_setwatermark(k->bev, EV_WRITE, 0, 0);
}

static void conn_free(struct ctl_conn *k);

/* Closes now if everything was sent, else once it has been. */
static void conn_close_when_sent(struct ctl_conn *k)
{
    if (evbuffer_get_length(bufferevent_get_output(k->bev)) == 0)
        conn_free(k);
    else
        conn_close_after_reply(k);
}

/* ---- the connection ------------------------------------------------------- */

static void conn_free(struct ctl_conn *k)
{
    *k->pprev = k->next;
    if (k->next)
        k->next->pprev = k->pprev;
    k->c->nconns--;
    if (k->pump)
        event_free(k->pump);
    bufferevent_free(k->bev);
    if (k->text)
        evbuffer_free(k->text);
    report_stats_free(&k->stats);
    free(k);
}

static bool active_cb(void *arg, const char *id, uint16_t idx)
{
    return scheduler_active(arg, id, idx);
}

static void read_cb(struct bufferevent *bev, void *arg);

/* Back to waiting for a request; one already sent is handled now. A
 * client that half-closed gets the rest of its answers, then the close. */
static void conn_idle(struct ctl_conn *k)
{
    k->state = CONN_IDLE;
    if (!k->eof)
        bufferevent_enable(k->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_input(k->bev)) > 0)
        read_cb(k->bev, k);
    if (k->eof && k->state == CONN_IDLE)
        conn_close_when_sent(k);
}

/* ---- list and stats: the walk in slices ---------------------------------- */

static int walk_cb(const struct queue_envelope *env, void *arg)
{
    struct ctl_conn *k = arg;
    memcpy(k->last, env->id, sizeof k->last);
    if (k->state == CONN_LIST)
        report_list_add(&k->list, env, k->text);
    else
        report_stats_add(&k->stats, env);
    return 0;
}

static void pump_later(struct ctl_conn *k)
{
    /* A zero timeout, not event_active: the loop polls its sockets before
     * the timer runs, so the SMTP sessions get their turn between slices. */
    static const struct timeval now = { 0, 0 };
    evtimer_add(k->pump, &now);
}

static void walk_finish(struct ctl_conn *k, int rc)
{
    if (rc < 0) {
        evbuffer_drain(k->text, evbuffer_get_length(k->text));
        reply_done(k, "error cannot read the queue (see the daemon's log)");
    } else if (k->state == CONN_LIST) {
        report_list_end(&k->list, k->text);
        reply_done(k, "ok %llu", (unsigned long long)k->list.messages);
    } else {
        struct sched_stats ss;
        memset(&ss, 0, sizeof ss);
        if (k->c->s)
            scheduler_stats(k->c->s, &ss);
        report_stats_end(&k->stats, k->c->s ? &ss : NULL, (int64_t)time(NULL),
                         k->text);
        report_stats_free(&k->stats);
        reply_done(k, "ok");
    }
    conn_idle(k);
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct ctl_conn *k = arg;
    if (k->state != CONN_LIST && k->state != CONN_STATS)
        return;
    struct evbuffer *out = conn_out(k);
    if (evbuffer_get_length(out) >= CTL_OUT_HIGH)
        return;                  /* write_cb calls again once it drained */
    int rc = queue_walk_from(k->c->q, k->last[0] ? k->last : NULL, CTL_SLICE,
                             walk_cb, k);
    ctl_frame(out, k->text, false);
    if (rc != QUEUE_WALK_MORE) {
        walk_finish(k, rc);
        return;
    }
    if (evbuffer_get_length(out) < CTL_OUT_HIGH)
        pump_later(k);
}

static int walk_start(struct ctl_conn *k, enum conn_state st)
{
    if (!k->pump && !(k->pump = evtimer_new(k->c->base, pump_cb, k)))
        return -1;
    k->state = st;
    k->last[0] = '\0';
    /* Requests sent meanwhile wait in the input buffer. */
    bufferevent_disable(k->bev, EV_READ);
    pump_later(k);
    return 0;
}

/* ---- the verbs -------------------------------------------------------------- */

static void do_list(struct ctl_conn *k, const struct ctl_request *req)
{
    enum report_fmt fmt = REPORT_TEXT;
    const char *domain = NULL;
    for (int i = 0; i < req->argc; i++) {
        if (strcmp(req->argv[i], "json") == 0)
            fmt = REPORT_JSON;
        else if (!domain)
            domain = req->argv[i];
        else {
            reply_done(k, "error usage: list [DOMAIN] [json]");
            return;
        }
    }
    report_list_init(&k->list, fmt, domain, k->c->s ? active_cb : NULL,
                     k->c->s);
    if (walk_start(k, CONN_LIST) < 0)
        reply_done(k, "error out of memory");
}

static void do_stats(struct ctl_conn *k, const struct ctl_request *req)
{
    (void)req;
    report_stats_free(&k->stats);
    report_stats_init(&k->stats, k->c->s ? active_cb : NULL, k->c->s);
    if (walk_start(k, CONN_STATS) < 0)
        reply_done(k, "error out of memory");
}

static void do_show(struct ctl_conn *k, const struct ctl_request *req)
{
    const char *id = req->argv[0];
    bool whole = req->argc == 2;
    if (whole && strcmp(req->argv[1], "body") != 0) {
        reply_done(k, "error usage: show ID [body]");
        return;
    }
    struct queue_envelope env;
    struct evbuffer *body = evbuffer_new();
    if (!body) {
        reply_done(k, "error out of memory");
        return;
    }
    int rc = queue_get(k->c->q, id, &env, body);
    if (rc == 1)
        reply_done(k, "error no such message: %s", id);
    else if (rc < 0)
        reply_done(k, "error cannot read message %s (see the daemon's log)",
                   id);
    else {
        report_show(&env, body, whole, k->c->s ? active_cb : NULL, k->c->s,
                    k->text);
        queue_envelope_free(&env);
        reply_done(k, "ok");
    }
    evbuffer_free(body);
}

static void do_version(struct ctl_conn *k, const struct ctl_request *req)
{
    (void)req;
    evbuffer_add_printf(k->text, "backupmx %s\n", BMX_VERSION);
    reply_done(k, "ok");
}

/* What an action may name besides a queue id. */
#define WHAT_ALL      0x01       /* "all" (or nothing, with WHAT_NONE) */
#define WHAT_DOMAIN   0x02       /* a recipient domain */
#define WHAT_NONE     0x04       /* no argument: everything */

struct action {
    const char *verb;
    const char *done;            /* for the reply: "3 messages flushed" */
    unsigned what;
    int (*fn)(struct scheduler *s, const char *what);
};

static const struct action actions[] = {
    { "flush", "flushed", WHAT_ALL | WHAT_DOMAIN | WHAT_NONE, scheduler_flush },
    { "hold", "held", WHAT_ALL, scheduler_hold },
    { "release", "released", WHAT_ALL, scheduler_release },
    { "delete", "deleted", WHAT_ALL | WHAT_DOMAIN, scheduler_delete },
    { "bounce", "bounced", 0, scheduler_bounce },
};

static void do_action(struct ctl_conn *k, const struct ctl_request *req)
{
    const struct action *a = NULL;
    for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++)
        if (strcmp(actions[i].verb, req->verb) == 0)
            a = &actions[i];
    const char *arg = req->argc ? req->argv[0] : NULL;
    const char *what = arg;
    if (!arg && !(a->what & WHAT_NONE)) {
        reply_done(k, "error usage: %s WHAT", a->verb);
        return;
    }
    if (arg && strcmp(arg, "all") == 0 && (a->what & WHAT_ALL))
        what = NULL;
    else if (arg && !ctl_is_id(arg) && !(a->what & WHAT_DOMAIN)) {
        reply_done(k, "error no such message: %s", arg);
        return;
    }
    if (!k->c->s) {
        reply_done(k, "error the scheduler is not running");
        return;
    }
    int n = a->fn(k->c->s, what);
    if (n == -2) {
        reply_done(k, "error no such message: %s", arg);
        return;
    }
    if (n < 0) {
        log_warn("control: %s %s failed", a->verb, arg ? arg : "all");
        reply_done(k, "error %s failed (see the daemon's log)", a->verb);
        return;
    }
    log_info("control: %s %s by uid %lu pid %ld: %d message%s", a->verb,
             arg ? arg : "all", (unsigned long)k->uid, (long)k->pid, n,
             n == 1 ? "" : "s");
    evbuffer_add_printf(k->text, "%s: %d message%s\n", a->done, n,
                        n == 1 ? "" : "s");
    reply_done(k, "ok %d", n);
}

struct verb {
    const char *name;
    int min, max;                /* arguments */
    void (*fn)(struct ctl_conn *k, const struct ctl_request *req);
};

static const struct verb verbs[] = {
    { "list", 0, 2, do_list },
    { "show", 1, 2, do_show },
    { "stats", 0, 0, do_stats },
    { "flush", 0, 1, do_action },
    { "hold", 1, 1, do_action },
    { "release", 1, 1, do_action },
    { "delete", 1, 1, do_action },
    { "bounce", 1, 1, do_action },
    { "version", 0, 0, do_version },
};

static void handle_line(struct ctl_conn *k, char *line)
{
    struct ctl_request req;
    if (ctl_request_parse(line, &req) < 0) {
        reply_done(k, "error bad request");
        return;
    }
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        const struct verb *v = &verbs[i];
        if (strcmp(v->name, req.verb) != 0)
            continue;
        if (req.argc < v->min || req.argc > v->max)
            reply_done(k, "error wrong number of arguments for %s", v->name);
        else
            v->fn(k, &req);
        return;
    }
    reply_done(k, "error unknown command: %s", req.verb);
}

/* ---- events ------------------------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *k = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (k->state == CONN_CLOSING)
        evbuffer_drain(in, evbuffer_get_length(in));
    while (k->state == CONN_IDLE) {
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (!line) {
            if (evbuffer_get_length(in) > CTL_LINE_MAX) {
                reply_done(k, "error request line too long");
                conn_close_after_reply(k);
            }
            return;
        }
        if (n > CTL_LINE_MAX) {
            reply_done(k, "error request line too long");
            conn_close_after_reply(k);
        } else if (strlen(line) != n)
            reply_done(k, "error bad request");
        else
            handle_line(k, line);
        free(line);
    }
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *k = arg;
    if (k->state == CONN_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            conn_free(k);
    } else if ((k->state == CONN_LIST || k->state == CONN_STATS) &&
               !evtimer_pending(k->pump, NULL))
        pump_later(k);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct ctl_conn *k = arg;
    if (what & BEV_EVENT_TIMEOUT)
        log_info("control: client pid %ld timed out", (long)k->pid);
    if ((what & (BEV_EVENT_EOF | BEV_EVENT_READING)) ==
        (BEV_EVENT_EOF | BEV_EVENT_READING) && !(what & BEV_EVENT_ERROR)) {
        /* A half-close (socat, nc -N): answer what was asked first. */
        k->eof = true;
        bufferevent_disable(bev, EV_READ);
        if (k->state == CONN_IDLE || k->state == CONN_CLOSING)
            conn_close_when_sent(k);
        return;                  /* a walk closes when it is done */
    }
    conn_free(k);
}

/* ---- accepting -------------------------------------------------------------- */

/* Does user UID belong to group GID (its passwd entry or the group file)? */
static bool user_in_group(uid_t uid, gid_t gid)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) != 0 || !res)
        return false;
    if (pw.pw_gid == gid)
        return true;
    int n = 64;
    gid_t *groups = malloc((size_t)n * sizeof *groups);
    if (groups && getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0) {
        gid_t *g = n > 0 ? realloc(groups, (size_t)n * sizeof *g) : NULL;
        if (!g || getgrouplist(pw.pw_name, pw.pw_gid, g, &n) < 0)
            n = 0;
        groups = g ? g : groups;
    }
    bool found = false;
    for (int i = 0; groups && i < n && !found; i++)
        found = groups[i] == gid;
    free(groups);
    return found;
}

static bool peer_allowed(const struct control *c, const struct ucred *cr)
{
    return cr->uid == 0 || cr->uid == c->uid || cr->gid == c->gid ||
           user_in_group(cr->uid, c->gid);
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)lis;
    (void)sa;
    (void)salen;
    struct control *c = arg;
    struct ucred cr = { .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
    socklen_t crlen = sizeof cr;
    bool ok = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) == 0 &&
              peer_allowed(c, &cr);
    struct ctl_conn *k = NULL;
    if (c->nconns >= CTL_MAX_CONNS || !(k = calloc(1, sizeof *k)) ||
        !(k->text = evbuffer_new()) ||
        !(k->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE))) {
        log_warn("control: connection refused: %s",
                 k ? "out of memory" : "too many connections");
        if (k && k->text)
            evbuffer_free(k->text);
        free(k);
        evutil_closesocket(fd);
        return;
    }
    k->c = c;
    k->uid = cr.uid;
    k->pid = cr.pid;
    k->next = c->conns;
    k->pprev = &c->conns;
    if (c->conns)
        c->conns->pprev = &k->next;
    c->conns = k;
    c->nconns++;
    bufferevent_setcb(k->bev, read_cb, write_cb, event_cb, k);
    bufferevent_setwatermark(k->bev, EV_WRITE, CTL_OUT_LOW, 0);
    struct timeval rt = { CTL_IDLE_SECONDS, 0 }, wt = { CTL_WRITE_SECONDS, 0 };
    bufferevent_set_timeouts(k->bev, &rt, &wt);
    if (!ok) {
        log_warn("control: uid %ld pid %ld: permission denied", (long)cr.uid,
                 (long)cr.pid);
        reply_done(k, "error permission denied");
        conn_close_after_reply(k);
        bufferevent_enable(k->bev, EV_READ | EV_WRITE);
        return;
    }
    bufferevent_enable(k->bev, EV_READ | EV_WRITE);
}

/* ---- the socket ---------------------------------------------------------------- */

/* Removes a socket file left by a daemon that died; refuses to touch
 * anything else, or a socket somebody still listens on. */
static int remove_stale(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        log_err("control: %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISSOCK(st.st_mode)) {
        log_err("control: %s exists and is not a socket", path);
        return -1;
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_err("control: socket: %s", strerror(errno));
        return -1;
    }
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN) {
        log_err("control: %s is in use by another process", path);
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        log_err("control: cannot remove the stale %s: %s", path,
                strerror(errno));
        return -1;
    }
    return 0;
}

static int control_listen(struct control *c)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(c->path) >= sizeof sa.sun_path) {
        log_err("control: %s: path too long", c->path);
        return -1;
    }
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    if (remove_stale(c->path) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_err("control: socket: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    /* Between bind and chmod the mode comes from the umask; the peer check
     * stands guard meanwhile. */
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        chmod(c->path, 0660) != 0 || lstat(c->path, &st) != 0 ||
        listen(fd, 16) != 0) {
        log_err("control: %s: %s", c->path, strerror(errno));
        close(fd);
        return -1;
    }
    if (st.st_gid != c->gid && chown(c->path, (uid_t)-1, c->gid) != 0)
        log_warn("control: chown %s: %s", c->path, strerror(errno));
    c->dev = st.st_dev;
    c->ino = st.st_ino;
    c->lis = evconnlistener_new(c->base, accept_cb, c,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                0, fd);
    if (!c->lis) {
        log_err("control: cannot listen on %s", c->path);
        close(fd);
        unlink(c->path);
        return -1;
    }
    return 0;
}

struct control *control_new(struct event_base *base,
                            const struct bmx_config *cfg, struct queue *q,
                            struct scheduler *s)
{
    struct control *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(cfg->control))) {
        log_err("control: out of memory");
        free(c);
        return NULL;
    }
    c->base = base;
    c->cfg = cfg;
    c->q = q;
    c->s = s;
    c->uid = geteuid();
    c->gid = getegid();
    if (control_listen(c) < 0) {
        free(c->path);
        free(c);
        return NULL;
    }
    log_info("control: listening on %s", c->path);
    return c;
}

void control_free(struct control *c)
{
    if (!c)
        return;
    while (c->conns)
        conn_free(c->conns);
    evconnlistener_free(c->lis);
    struct stat st;
    if (lstat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
        unlink(c->path);
    free(c->path);
    free(c);
}
