/* Operator requests on the queue (bmxq through the control socket, and
 * ETRN): flush, hold, release, delete, bounce. WHAT is NULL for the whole
 * queue, a queue id, or a domain (its recipients). */
#include "sched_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

struct op {
    struct scheduler *s;
    const char *domain;          /* NULL: every recipient */
    enum rcpt_state from, to;
    int64_t now;
    char last_id[QUEUE_ID_LEN + 1];
    int messages;                /* distinct messages touched */
};

static bool is_queue_id(const char *what)
{
    if (strlen(what) != QUEUE_ID_LEN)
        return false;
    for (const char *p = what; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z')))
            return false;
    return true;
}

static bool rcpt_in_domain(const char *addr, const char *domain)
{
    const char *at = strrchr(addr, '@');
    return at != NULL && strcasecmp(at + 1, domain) == 0;
}

static bool change_fn(const char *id, uint16_t idx, struct queue_rcpt *r, void *arg)
{
    struct op *o = arg;
    if (r->state != o->from || (o->domain && !rcpt_in_domain(r->addr, o->domain)))
        return false;
    /* A flush leaves what is being delivered alone (see make_due_fn). */
    if (o->from == o->to && sched_is_leased(o->s, id, idx))
        return false;
    r->state = o->to;
    r->next_attempt = o->now;
    if (strcmp(o->last_id, id) != 0) {
        snprintf(o->last_id, sizeof o->last_id, "%s", id);
        o->messages++;
    }
    return true;
}

/* Applies FROM -> TO to the recipients WHAT names. */
static int change(struct scheduler *s, const char *what, enum rcpt_state from,
                  enum rcpt_state to)
{
    struct op o = { .s = s, .from = from, .to = to, .now = (int64_t)time(NULL) };
    const char *id = NULL;
    if (what != NULL && strcasecmp(what, "all") != 0) {
        if (is_queue_id(what))
            id = what;
        else
            o.domain = what;
    }
    if (id != NULL) {
        struct queue_envelope env;
        int rc = queue_get(s->q, id, &env, NULL);
        if (rc != 0)
            return rc == 1 ? -2 : -1;
        queue_envelope_free(&env);
    }
    if (queue_rcpt_scan(s->q, id, change_fn, &o, NULL) < 0)
        return -1;
    return o.messages;
}

/* A flush also lifts the destination backoff: the operator says try now. */
static void wake_dests(struct scheduler *s, const char *domain)
{
    int64_t now = (int64_t)time(NULL);
    for (struct dest *d = s->dests; d != NULL; d = d->next)
        if (domain == NULL || strcasecmp(d->name, domain) == 0)
            d->next_probe = now;
}

int scheduler_flush(struct scheduler *s, const char *what)
{
    int n = change(s, what, RCPT_DEFERRED, RCPT_DEFERRED);
    if (n >= 0) {
        wake_dests(s, what != NULL && !is_queue_id(what) && strcasecmp(what, "all")
                          ? what : NULL);
        log_info("flush %s: %d messages due now", what ? what : "all", n);
        sched_kick(s);
    }
    return n;
}

int scheduler_hold(struct scheduler *s, const char *what)
{
    int n = change(s, what, RCPT_DEFERRED, RCPT_HELD);
    if (n >= 0)
        log_info("hold %s: %d messages held", what ? what : "all", n);
    return n;
}

int scheduler_release(struct scheduler *s, const char *what)
{
    int n = change(s, what, RCPT_HELD, RCPT_DEFERRED);
    if (n >= 0) {
        log_info("release %s: %d messages released", what ? what : "all", n);
        sched_kick(s);
    }
    return n;
}

bool scheduler_active(struct scheduler *s, const char *id, uint16_t idx)
{
    return sched_is_leased(s, id, idx);
}

/* Messages WHAT names, for delete and bounce. */
struct pick {
    const char *domain;
    char (*ids)[QUEUE_ID_LEN + 1];
    size_t n, cap;
};

static int pick_fn(const struct queue_envelope *env, void *arg)
{
    struct pick *p = arg;
    bool match = p->domain == NULL;
    for (size_t i = 0; !match && i < env->nrcpt; i++)
        match = env->rcpt[i].state != RCPT_DONE
                && rcpt_in_domain(env->rcpt[i].addr, p->domain);
    if (!match)
        return 0;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        void *v = realloc(p->ids, cap * sizeof *p->ids);
        if (v == NULL)
            return -1;
        p->ids = v;
        p->cap = cap;
    }
    memcpy(p->ids[p->n++], env->id, QUEUE_ID_LEN + 1);
    return 0;
}

static int pick(struct scheduler *s, const char *what, struct pick *p)
{
    memset(p, 0, sizeof *p);
    if (what != NULL && is_queue_id(what)) {
        struct queue_envelope env;
        int rc = queue_get(s->q, what, &env, NULL);
        if (rc != 0)
            return rc == 1 ? -2 : -1;
        queue_envelope_free(&env);
        p->ids = malloc(sizeof *p->ids);
        if (p->ids == NULL)
            return -1;
        memcpy(p->ids[0], what, QUEUE_ID_LEN + 1);
        p->n = 1;
        return 0;
    }
    if (what != NULL && strcasecmp(what, "all") != 0)
        p->domain = what;
    return queue_walk(s->q, pick_fn, p) < 0 ? -1 : 0;
}

int scheduler_delete(struct scheduler *s, const char *what)
{
    struct pick p;
    int rc = pick(s, what, &p);
    int n = 0;
    for (size_t i = 0; rc == 0 && i < p.n; i++) {
        if (queue_delete(s->q, p.ids[i]) == 0) {
            log_info("%s: removed by the administrator", p.ids[i]);
            n++;
        }
    }
    free(p.ids);
    return rc < 0 ? rc : n;
}

static void bounce_one(struct scheduler *s, const char *id)
{
    struct queue_envelope env;
    if (queue_get(s->q, id, &env, NULL) != 0)
        return;
    struct job_rcpt *r = calloc(env.nrcpt ? env.nrcpt : 1, sizeof *r);
    size_t n = 0;
    for (size_t i = 0; r != NULL && i < env.nrcpt; i++) {
        if (env.rcpt[i].state == RCPT_DONE)
            continue;
        r[n].idx = (uint16_t)i;
        r[n].addr = env.rcpt[i].addr;
        r[n].code = 550;
        snprintf(r[n].reply, sizeof r[n].reply,
                 "5.0.0 message returned by the administrator%s%s",
                 env.rcpt[i].last_error ? "; last error: " : "",
                 env.rcpt[i].last_error ? env.rcpt[i].last_error : "");
        s->st.bounced++;
        n++;
    }
    if (n > 0)
        sched_send_dsn(s, &env, r, n, false, NULL);
    free(r);
    queue_envelope_free(&env);
    queue_delete(s->q, id);
    log_info("%s: returned to sender by the administrator", id);
}

int scheduler_bounce(struct scheduler *s, const char *what)
{
    struct pick p;
    int rc = pick(s, what, &p);
    for (size_t i = 0; rc == 0 && i < p.n; i++)
        bounce_one(s, p.ids[i]);
    int n = rc < 0 ? rc : (int)p.n;
    free(p.ids);
    return n;
}
