/* The scheduler: pulls due recipients from the queue's schedule index,
 * groups them into jobs (one message, one destination), and hands them to
 * SMTP client connections, at most `concurrency` per destination.
 *
 * Backoff is per destination, not per message: when every next hop of a
 * destination fails, it is marked down and its mail waits for one probe
 * connection per interval (retry_min doubling up to retry_max). When any
 * connection to it succeeds again, all of its mail becomes due at once and
 * drains through `concurrency` connections.
 *
 * A recipient pulled into memory gets a lease (next_attempt moved ahead),
 * so the index does not return it twice and a crash only delays it. After
 * a crash the leases are lifted at start (a clean stop with nothing in
 * flight leaves a marker that saves the scan). */
#include "sched_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "dns.h"
#include "log.h"

#define PULL_MAX 512             /* due recipients read per tick */
#define READY_MAX 4096           /* recipients held in memory at most */
#define LEASE 60                 /* seconds a pulled recipient is hidden */
#define LEASE_BUCKETS 8192
#define IDLE_TICK 1              /* seconds between looks at an idle queue */

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

void sched_kick(struct scheduler *s)
{
    static const struct timeval zero = { 0, 0 };
    event_add(s->tick_ev, &zero);
}

static void tick_after(struct scheduler *s, int64_t secs)
{
    struct timeval tv = { (time_t)(secs < 0 ? 0 : secs), 0 };
    event_add(s->tick_ev, &tv);
}

int64_t sched_lifetime(const struct scheduler *s, const struct dest *d)
{
    if (d->dom != NULL && d->dom->lifetime > 0)
        return d->dom->lifetime;
    return s->cfg->queue.lifetime;
}

static int64_t rcpt_backoff(const struct scheduler *s, uint32_t attempts)
{
    int64_t b = s->cfg->queue.retry_min > 0 ? s->cfg->queue.retry_min : 1;
    for (uint32_t i = 1; i < attempts && b < s->cfg->queue.retry_max; i++)
        b *= 2;
    return b < s->cfg->queue.retry_max ? b : s->cfg->queue.retry_max;
}

/* ---- destinations ------------------------------------------------------ */

const char *sched_rcpt_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}

static struct dest *dest_find(struct scheduler *s, const char *domain)
{
    for (struct dest *d = s->dests; d != NULL; d = d->next)
        if (strcasecmp(d->name, domain) == 0)
            return d;
    return NULL;
}

static struct dest *dest_get(struct scheduler *s, const char *domain)
{
    struct dest *d = dest_find(s, domain);
    if (d != NULL)
        return d;
    d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    snprintf(d->name, sizeof d->name, "%s", domain);
    for (char *p = d->name; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    d->dom = config_find_domain(s->cfg, d->name);
    if (d->dom != NULL && d->dom->mode != MODE_RELAY)
        d->dom = NULL;
    d->next = s->dests;
    s->dests = d;
    return d;
}

int64_t scheduler_first_attempt(struct scheduler *s, const char *addr, int64_t now)
{
    const struct dest *d = dest_find(s, sched_rcpt_domain(addr));
    return d != NULL && d->down && d->next_probe > now ? d->next_probe : now;
}

/* ---- leases: recipients in memory, never pulled twice ------------------- */

struct unwritten;

struct lease {
    struct lease *next;
    char id[QUEUE_ID_LEN + 1];
    uint16_t idx;
    struct unwritten *unwritten; /* a result the queue could not record yet */
};

static struct lease **lease_slot(struct scheduler *s, const char *id, uint16_t idx)
{
    unsigned h = idx;
    for (const char *p = id; *p; p++)
        h = h * 31u + (unsigned char)*p;
    struct lease **l = &s->leased[h % LEASE_BUCKETS];
    while (*l != NULL && ((*l)->idx != idx || strcmp((*l)->id, id) != 0))
        l = &(*l)->next;
    return l;
}

static bool lease_take(struct scheduler *s, const char *id, uint16_t idx)
{
    struct lease **l = lease_slot(s, id, idx);
    if (*l != NULL || (*l = calloc(1, sizeof **l)) == NULL)
        return false;
    snprintf((*l)->id, sizeof (*l)->id, "%s", id);
    (*l)->idx = idx;
    return true;
}

bool sched_is_leased(struct scheduler *s, const char *id, uint16_t idx)
{
    return *lease_slot(s, id, idx) != NULL;
}

static void unwritten_free(struct unwritten *u);

static void lease_drop(struct scheduler *s, const char *id, uint16_t idx)
{
    struct lease **l = lease_slot(s, id, idx);
    if (*l == NULL)
        return;
    struct lease *dead = *l;
    *l = dead->next;
    unwritten_free(dead->unwritten);
    free(dead);
}

/* ---- jobs -------------------------------------------------------------- */

void job_free(struct job *j)
{
    if (j == NULL)
        return;
    for (size_t i = 0; i < j->n; i++)
        free(j->rcpt[i].addr);
    free(j->rcpt);
    j->env.nrcpt = 0;
    j->env.rcpt = NULL;
    queue_envelope_free(&j->env);
    free(j);
}

struct job *sched_take_job(struct scheduler *s, struct dest *d)
{
    struct job *j = d->ready;
    if (j == NULL)
        return NULL;
    d->ready = j->next;
    if (d->ready == NULL)
        d->ready_tail = NULL;
    d->nready -= j->n;
    s->nready -= j->n;
    j->next = NULL;
    if (s->refill && s->nready <= READY_MAX / 2) {
        s->refill = false;
        sched_kick(s);
    }
    return j;
}

static void dest_add(struct scheduler *s, struct dest *d, struct job *j)
{
    j->dest = d;
    if (d->ready_tail != NULL)
        d->ready_tail->next = j;
    else
        d->ready = j;
    d->ready_tail = j;
    d->nready += j->n;
    s->nready += j->n;
}

/* Copies the envelope (not its recipients) for a new job. */
static struct job *job_new(const struct queue_envelope *env)
{
    struct job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->env = *env;
    j->env.sender = strdup(env->sender ? env->sender : "");
    j->env.helo = strdup(env->helo ? env->helo : "");
    j->env.client_addr = strdup(env->client_addr ? env->client_addr : "");
    j->env.client_name = strdup(env->client_name ? env->client_name : "");
    j->env.nrcpt = 0;
    j->env.rcpt = NULL;
    if (!j->env.sender || !j->env.helo || !j->env.client_addr || !j->env.client_name) {
        job_free(j);
        return NULL;
    }
    return j;
}

static int job_add_rcpt(struct job *j, uint16_t idx, const struct queue_rcpt *r)
{
    struct job_rcpt *v = realloc(j->rcpt, (j->n + 1) * sizeof *v);
    if (v == NULL)
        return -1;
    j->rcpt = v;
    memset(&v[j->n], 0, sizeof v[j->n]);
    v[j->n].idx = idx;
    v[j->n].attempts = r->attempts;
    v[j->n].addr = strdup(r->addr);
    if (v[j->n].addr == NULL)
        return -1;
    j->n++;
    return 0;
}

/* Drops the recipients of J that the operator held, deleted or bounced
 * since J was made (bmxq acts on the queue, not on jobs). Returns how many
 * are left. */
size_t sched_job_prune(struct scheduler *s, struct job *j)
{
    struct queue_envelope env;
    int rc = queue_get(s->q, j->env.id, &env, NULL);
    size_t keep = 0;
    for (size_t i = 0; i < j->n; i++) {
        struct job_rcpt *r = &j->rcpt[i];
        bool live = rc == 0 && r->idx < env.nrcpt && env.rcpt[r->idx].state == RCPT_DEFERRED;
        if (!live) {
            lease_drop(s, j->env.id, r->idx);
            free(r->addr);
            continue;
        }
        j->rcpt[keep++] = *r;
    }
    j->n = keep;
    if (rc == 0)
        queue_envelope_free(&env);
    return keep;
}

/* ---- recording results ------------------------------------------------- */

static void log_delay(char *buf, size_t len, int64_t arrival)
{
    snprintf(buf, len, "%lld", (long long)(now_s() - arrival));
}

/* A delivery result the queue could not record (a full disk: the log
 * write failed). It stays in memory with the recipient's lease, so nobody
 * pulls the recipient meanwhile, and is written again every second: once
 * the disk has room, a delivered recipient is recorded instead of being
 * sent again when its lease runs out. A crash loses it, and then the lease
 * does run out: a duplicate, never a loss. */
struct unwritten {
    struct scheduler *s;
    struct event *ev;
    char id[QUEUE_ID_LEN + 1];
    uint16_t idx;
    struct queue_rcpt r;         /* last_error owned */
    unsigned tries;
};

#define UNWRITTEN_RETRY 1        /* seconds between attempts */

static void unwritten_free(struct unwritten *u)
{
    if (u == NULL)
        return;
    if (u->ev != NULL)
        event_free(u->ev);
    free(u->r.last_error);
    free(u);
}

/* 0 recorded (or the message is gone), -1 the queue failed. */
static int rcpt_record(struct scheduler *s, const char *id, uint16_t idx,
                       const struct queue_rcpt *r)
{
    bool gone = false;
    if (queue_rcpt_update(s->q, id, idx, r, &gone) < 0)
        return -1;
    if (gone)
        log_info("%s: removed", id);
    return 0;
}

static void unwritten_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct unwritten *u = arg;
    u->tries++;
    if (rcpt_record(u->s, u->id, u->idx, &u->r) == 0) {
        log_info("%s: delivery state of recipient %u recorded after %u retries",
                 u->id, u->idx, u->tries);
        lease_drop(u->s, u->id, u->idx);     /* frees U */
        return;
    }
    struct timeval tv = { UNWRITTEN_RETRY, 0 };
    evtimer_add(u->ev, &tv);
}

/* Hangs R on the recipient's lease for unwritten_cb; false when there is
 * no lease (nothing was pulled: the next tick reads it again anyway). */
static bool keep_unwritten(struct scheduler *s, const char *id, uint16_t idx,
                           const struct queue_rcpt *r)
{
    struct lease *l = *lease_slot(s, id, idx);
    if (l == NULL)
        return false;
    struct unwritten *u = l->unwritten;
    if (u == NULL && (u = calloc(1, sizeof *u)) != NULL
        && (u->ev = evtimer_new(s->base, unwritten_cb, u)) == NULL) {
        free(u);
        u = NULL;
    }
    if (u == NULL)
        return false;
    free(u->r.last_error);
    u->s = s;
    snprintf(u->id, sizeof u->id, "%s", id);
    u->idx = idx;
    u->r = *r;
    u->r.last_error = r->last_error ? strdup(r->last_error) : NULL;
    l->unwritten = u;
    struct timeval tv = { UNWRITTEN_RETRY, 0 };
    evtimer_add(u->ev, &tv);
    return true;
}

static void rcpt_write(struct scheduler *s, const char *id, uint16_t idx,
                       enum rcpt_state st, uint32_t attempts, int64_t next,
                       const char *err)
{
    struct queue_rcpt r = {
        .state = st, .attempts = attempts, .next_attempt = next,
        .last_error = (char *)err,
    };
    if (rcpt_record(s, id, idx, &r) == 0) {
        lease_drop(s, id, idx);
        return;
    }
    bool kept = keep_unwritten(s, id, idx, &r);
    log_err("%s: cannot record delivery state of recipient %u%s", id, idx,
            kept ? ": will retry" : "");
    if (!kept)
        lease_drop(s, id, idx);
}

/* The outcome's class: 2 sent, 5 bounced, 4 anything else (a local error
 * has code 0, a garbage reply may have a 3xx). */
static char outcome_class(int code)
{
    return code >= 200 && code < 300 ? '2' : code >= 500 ? '5' : '4';
}

static const char *enh_code(const char *reply, char *buf, size_t len, int code)
{
    /* "550 5.1.1 text" -> "5.1.1"; without one, derive from the class. The
     * class is always the outcome's, as Postfix does: "451 5.1.1" is a
     * deferral, and a status=deferred line must not say dsn=2.0.0. */
    const char *p = reply;
    if (strlen(p) > 4 && (p[4] == '2' || p[4] == '4' || p[4] == '5') && p[5] == '.') {
        size_t n = strcspn(p + 4, " ");
        if (n < len) {
            memcpy(buf, p + 4, n);
            buf[n] = '\0';
            buf[0] = outcome_class(code);
            return buf;
        }
    }
    snprintf(buf, len, "%c.0.0", outcome_class(code));
    return buf;
}

/* The DSN goes first: recording the last recipient may delete the
 * message, and the DSN quotes its headers. A crash in between can only
 * send the DSN twice. */
static void job_bounce_failed(struct scheduler *s, struct job *j, const char *relay)
{
    struct job_rcpt *failed = calloc(j->n ? j->n : 1, sizeof *failed);
    size_t nfailed = 0;
    for (size_t i = 0; failed != NULL && i < j->n; i++)
        if (j->rcpt[i].code >= 500)
            failed[nfailed++] = j->rcpt[i];
    if (nfailed > 0)
        sched_send_dsn(s, &j->env, failed, nfailed, false, relay);
    free(failed);
}

void sched_job_done(struct scheduler *s, struct job *j, const char *relay)
{
    int64_t now = now_s();
    char delay[32], enh[16];
    log_delay(delay, sizeof delay, j->env.arrival);
    job_bounce_failed(s, j, relay);
    for (size_t i = 0; i < j->n; i++) {
        struct job_rcpt *r = &j->rcpt[i];
        const char *reply = r->reply[0] ? r->reply : "no reply";
        enh_code(reply, enh, sizeof enh, r->code);
        if (r->code >= 200 && r->code < 300) {
            rcpt_write(s, j->env.id, r->idx, RCPT_DONE, r->attempts + 1, now, NULL);
            s->st.delivered++;
            log_info("%s: to=<%s>, relay=%s, delay=%s, dsn=%s, status=sent (%s)",
                     j->env.id, r->addr, relay, delay, enh, reply);
        } else if (r->code >= 500) {
            rcpt_write(s, j->env.id, r->idx, RCPT_DONE, r->attempts + 1, now, reply);
            s->st.bounced++;
            log_info("%s: to=<%s>, relay=%s, delay=%s, dsn=%s, status=bounced (%s)",
                     j->env.id, r->addr, relay, delay, enh, reply);
        } else {
            uint32_t att = r->attempts + 1;
            int64_t next = now + rcpt_backoff(s, att);
            if (j->dest->down && j->dest->next_probe > next)
                next = j->dest->next_probe;
            rcpt_write(s, j->env.id, r->idx, RCPT_DEFERRED, att, next, reply);
            s->st.deferred++;
            log_info("%s: to=<%s>, relay=%s, delay=%s, dsn=%s, status=deferred (%s)",
                     j->env.id, r->addr, relay, delay, enh, reply);
        }
    }
    job_free(j);
}

/* Gives every job still waiting for D back to the queue, due at the probe. */
static void dest_requeue(struct scheduler *s, struct dest *d)
{
    struct job *j;
    while ((j = sched_take_job(s, d)) != NULL) {
        for (size_t i = 0; i < j->n; i++)
            rcpt_write(s, j->env.id, j->rcpt[i].idx, RCPT_DEFERRED,
                       j->rcpt[i].attempts, d->next_probe, d->last_error);
        job_free(j);
    }
}

void sched_dest_failed(struct scheduler *s, struct dest *d, const char *why)
{
    if (d->down && now_s() < d->next_probe) {
        dest_requeue(s, d);      /* a sibling connection already said so */
        return;
    }
    int64_t min = s->cfg->queue.retry_min > 0 ? s->cfg->queue.retry_min : 1;
    d->backoff = d->down ? d->backoff * 2 : min;
    if (d->backoff > s->cfg->queue.retry_max)
        d->backoff = s->cfg->queue.retry_max;
    if (d->backoff < min)
        d->backoff = min;
    d->down = true;
    d->next_probe = now_s() + d->backoff;
    snprintf(d->last_error, sizeof d->last_error, "%s", why);
    log_info("destination %s is down (%s); next probe in %llds", d->name, why,
             (long long)d->backoff);
    dest_requeue(s, d);
}

void sched_dest_up(struct scheduler *s, struct dest *d)
{
    if (!d->down)
        return;
    d->down = false;
    d->backoff = 0;
    d->last_error[0] = '\0';
    sched_due_start(s, d->name);
    sched_kick(s);
}

void sched_conn_gone(struct scheduler *s, struct dest *d)
{
    d->nconn--;
    sched_kick(s);
}

/* ---- the tick ---------------------------------------------------------- */

static void expire_rcpt(struct scheduler *s, const struct queue_envelope *env,
                        uint16_t idx, const struct queue_rcpt *r)
{
    const char *why = r->last_error ? r->last_error : "delivery time expired";
    s->st.bounced++;
    if (env->sender == NULL || env->sender[0] == '\0') {
        log_info("%s: to=<%s>, status=expired, null sender: dropped (%s)", env->id, r->addr, why);
    } else {
        log_info("%s: to=<%s>, status=expired, returned to sender (%s)", env->id, r->addr, why);
        struct job_rcpt jr = { .idx = idx, .addr = r->addr, .code = 0 };
        snprintf(jr.reply, sizeof jr.reply, "4.4.7 message expired: %s", why);
        sched_send_dsn(s, env, &jr, 1, false, NULL);
    }
    rcpt_write(s, env->id, idx, RCPT_DONE, r->attempts, now_s(), why);
}

static void maybe_warn(struct scheduler *s, const struct queue_envelope *env,
                       int64_t now)
{
    int64_t dw = s->cfg->queue.delay_warning;
    if (dw <= 0 || (env->flags & QENV_WARNED) || now - env->arrival < dw
        || env->sender == NULL || env->sender[0] == '\0')
        return;
    struct job_rcpt *r = calloc(env->nrcpt, sizeof *r);
    size_t n = 0;
    for (size_t i = 0; r != NULL && i < env->nrcpt; i++) {
        if (env->rcpt[i].state == RCPT_DONE)
            continue;
        r[n].addr = env->rcpt[i].addr;
        r[n].idx = (uint16_t)i;
        snprintf(r[n].reply, sizeof r[n].reply, "%s",
                 env->rcpt[i].last_error ? env->rcpt[i].last_error : "still trying");
        n++;
    }
    if (n > 0) {
        sched_send_dsn(s, env, r, n, true, NULL);
        queue_set_flags(s->q, env->id, env->flags | QENV_WARNED);
        log_info("%s: sender delay notification sent", env->id);
    }
    free(r);
}

/* A recipient still held in memory (waiting for a connection, or in
 * flight) whose lease ran out in the index: hidden again for LEASE, else
 * it would head the index, come back on every tick, and make the tick run
 * again at once. The lease in memory stays. */
static void lease_renew(struct scheduler *s, const char *id, uint16_t idx,
                        const struct queue_rcpt *r, int64_t now)
{
    struct queue_rcpt hidden = *r;
    hidden.next_attempt = now + LEASE;
    if (rcpt_record(s, id, idx, &hidden) < 0)
        log_err("%s: cannot renew the lease of recipient %u", id, idx);
}

/* One due recipient: expire it, park it behind a down destination, or
 * lease it into a job. J is the job being filled for this message. */
static void take_rcpt(struct scheduler *s, const struct queue_envelope *env,
                      uint16_t idx, int64_t now, struct job **jobs, size_t *njobs)
{
    const struct queue_rcpt *r = &env->rcpt[idx];
    if (r->state != RCPT_DEFERRED)
        return;
    if (lease_slot(s, env->id, idx)[0] != NULL) {
        lease_renew(s, env->id, idx, r, now);
        return;
    }
    struct dest *d = dest_get(s, sched_rcpt_domain(r->addr));
    if (d == NULL)
        return;
    if (now - env->arrival >= sched_lifetime(s, d)) {
        expire_rcpt(s, env, idx, r);
        return;
    }
    if (d->down && now < d->next_probe) {
        rcpt_write(s, env->id, idx, RCPT_DEFERRED, r->attempts, d->next_probe,
                   r->last_error);
        return;
    }
    struct job *j = NULL;
    for (size_t i = 0; i < *njobs; i++)
        if (jobs[i]->dest == d)
            j = jobs[i];
    if (j == NULL) {
        if ((j = job_new(env)) == NULL)
            return;
        j->dest = d;
        jobs[(*njobs)++] = j;
    }
    if (job_add_rcpt(j, idx, r) == 0) {
        rcpt_write(s, env->id, idx, RCPT_DEFERRED, r->attempts, now + LEASE,
                   r->last_error);
        lease_take(s, env->id, idx);
    }
}

/* Loads message ID once and takes every due recipient of it in DUE. */
static void take_message(struct scheduler *s, const struct queue_due *due,
                         size_t n, int64_t now)
{
    struct queue_envelope env;
    if (queue_get(s->q, due[0].id, &env, NULL) != 0)
        return;
    maybe_warn(s, &env, now);
    struct job **jobs = calloc(n, sizeof *jobs);
    size_t njobs = 0;
    for (size_t i = 0; jobs != NULL && i < n; i++)
        if (due[i].idx < env.nrcpt)
            take_rcpt(s, &env, due[i].idx, now, jobs, &njobs);
    for (size_t i = 0; i < njobs; i++)
        dest_add(s, jobs[i]->dest, jobs[i]);
    free(jobs);
    queue_envelope_free(&env);
}

static void dispatch(struct scheduler *s, int64_t now)
{
    for (struct dest *d = s->dests; d != NULL; d = d->next) {
        if (d->ready == NULL || (d->down && now < d->next_probe))
            continue;
        /* Down: one probe at a time. Up: up to `concurrency`. */
        unsigned limit = d->down ? 1 : (unsigned)s->cfg->queue.concurrency;
        while (d->nconn < limit && d->nconn < d->nready) {
            if (mta_start(s, d) != 0)
                break;
        }
    }
}

static int cmp_due_id(const void *a, const void *b)
{
    const struct queue_due *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (int)x->idx - (int)y->idx;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct scheduler *s = arg;
    int64_t now = now_s();
    int n = 0;
    if (s->nready < READY_MAX) {
        static struct queue_due due[PULL_MAX];
        n = queue_due(s->q, now, due, PULL_MAX);
        if (n > 0)
            qsort(due, (size_t)n, sizeof *due, cmp_due_id);
        for (int i = 0; i < n;) {
            int k = i + 1;
            while (k < n && strcmp(due[k].id, due[i].id) == 0)
                k++;
            take_message(s, &due[i], (size_t)(k - i), now);
            i = k;
        }
    }
    dispatch(s, now);
    if (n == PULL_MAX && s->nready < READY_MAX) {
        sched_kick(s);
        return;
    }
    /* What is still due now could not be taken (full lists, an unreadable
     * record): looking again at once would spin. Full lists are refilled
     * when half drained (sched_take_job); the rest waits for a kick or the
     * next second, which is also the schedule's resolution. */
    s->refill = s->nready >= READY_MAX;
    tick_after(s, IDLE_TICK);
}

/* ---- life cycle -------------------------------------------------------- */

#define STOPPED_MARKER "scheduler.stopped"

static void marker_path(const struct scheduler *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s/" STOPPED_MARKER, s->cfg->spool);
}

static bool lift_lease_fn(const char *id, uint16_t idx, struct queue_rcpt *r, void *arg)
{
    (void)id;
    (void)idx;
    int64_t now = *(const int64_t *)arg;
    if (r->state != RCPT_DEFERRED || r->next_attempt <= now || r->next_attempt > now + LEASE)
        return false;
    r->next_attempt = now;      /* a backoff ending within LEASE goes early: harmless */
    return true;
}

/* The recipients a killed daemon had in memory wait out their lease;
 * nobody holds them now, so they are due at once. */
static void lift_crash_leases(struct scheduler *s)
{
    char path[4096];
    marker_path(s, path, sizeof path);
    if (unlink(path) == 0)
        return;                 /* stopped cleanly, nothing was in flight */
    int64_t now = now_s();
    size_t n = 0;
    if (queue_rcpt_scan(s->q, NULL, lift_lease_fn, &now, &n) < 0)
        log_warn("cannot look for recipients leased before a crash");
    else if (n > 0)
        log_info("%zu recipients were in memory when the daemon last stopped: due now", n);
}

static void leave_marker(const struct scheduler *s)
{
    char path[4096];
    marker_path(s, path, sizeof path);
    FILE *f = fopen(path, "w");
    if (f != NULL)
        fclose(f);
}

struct scheduler *scheduler_new(struct event_base *base, const struct bmx_config *cfg,
                                struct queue *q, struct dns *dns)
{
    struct scheduler *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->base = base;
    s->cfg = cfg;
    s->q = q;
    s->dns = dns;
    s->tls = mta_tls_ctx();
    s->tick_ev = evtimer_new(base, tick_cb, s);
    s->leased = calloc(LEASE_BUCKETS, sizeof *s->leased);
    if (s->tick_ev == NULL || s->tls == NULL || s->leased == NULL) {
        scheduler_free(s);
        return NULL;
    }
    lift_crash_leases(s);
    sched_kick(s);
    return s;
}

void scheduler_free(struct scheduler *s)
{
    if (s == NULL)
        return;
    mta_free_all(s);
    sched_due_free_all(s);
    while (s->dests != NULL) {
        struct dest *d = s->dests;
        s->dests = d->next;
        struct job *j;
        while ((j = sched_take_job(s, d)) != NULL) {
            /* Not started: due again at once after a restart. */
            for (size_t i = 0; i < j->n; i++)
                rcpt_write(s, j->env.id, j->rcpt[i].idx, RCPT_DEFERRED,
                           j->rcpt[i].attempts, now_s(), NULL);
            job_free(j);
        }
        free(d);
    }
    bool in_flight = false;
    for (size_t b = 0; s->leased != NULL && b < LEASE_BUCKETS; b++) {
        while (s->leased[b] != NULL) {
            in_flight = true;
            struct lease *l = s->leased[b];
            s->leased[b] = l->next;
            /* A last try: otherwise the lease runs out and it goes twice. */
            if (l->unwritten != NULL && rcpt_record(s, l->id, l->idx, &l->unwritten->r) < 0)
                log_warn("%s: delivery state of recipient %u not recorded", l->id, l->idx);
            unwritten_free(l->unwritten);
            free(l);
        }
    }
    if (s->leased != NULL && !in_flight)
        leave_marker(s);
    free(s->leased);
    if (s->tick_ev != NULL)
        event_free(s->tick_ev);
    SSL_CTX_free(s->tls);
    free(s);
}

void scheduler_stats(struct scheduler *s, struct sched_stats *st)
{
    *st = s->st;
    st->ndown = 0;
    for (struct dest *d = s->dests; d != NULL; d = d->next) {
        if (!d->down)
            continue;
        if (st->ndown < sizeof st->down / sizeof st->down[0]) {
            struct sched_dest_info *i = &st->down[st->ndown];
            snprintf(i->name, sizeof i->name, "%s", d->name);
            i->down = true;
            i->next_probe = d->next_probe;
            snprintf(i->last_error, sizeof i->last_error, "%s", d->last_error);
        }
        st->ndown++;
    }
}
