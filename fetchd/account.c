/* One pass over one account, in the order that makes a crash harmless:
 *
 *   list   what the server has; forget records of messages it no longer has
 *   sort   done before (a crash after the record, before the delete): delete
 *          now; too large: leave and log; the rest, up to fetch_limit: fetch
 *   fetch  in batches bounded by count and bytes
 *   each   route (multidrop), deliver, then record it as delivered in the
 *          state database (written to the log file, not yet synced); mda:
 *          programs of up to mda_concurrency messages run while the next
 *          ones are fetched, each message recorded once its own exited
 *          (so messages may be recorded, and delivered, out of order)
 *   batch  then sync the state's log once, and only then delete on the
 *          server what was recorded (unless keep)
 *
 * A message is deleted only after its record is on disk, and recorded only
 * after the target accepted it: a crash anywhere loses nothing. Only a
 * message whose delivery had finished but whose record had not can be
 * delivered a second time when fetchd dies (one, or up to mda_concurrency
 * whose programs were running); when the machine dies, also the messages
 * of the batch in hand whose records were not synced yet. One sync per
 * batch instead of one per message: a device flush costs as much as a
 * whole delivery. Partial deliveries (some recipients accepted,
 * others deferred) are recorded per recipient, so a retry reaches only the
 * missing ones. */
#include "account.h"
#include "deliver.h"
#include "log.h"
#include "multidrop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile sig_atomic_t fetchd_stopping;
volatile sig_atomic_t fetchd_wakeup;

struct inflight;

struct run {
    const struct fd_account *a;
    struct state *st;
    struct deliverer *d;
    struct md_rules rules;
    struct state_rec *recs;     /* parallel to the todo list */
    struct fetch_msg **todo;
    size_t ntodo;
    struct fetch_msg **done;    /* recorded in this batch, to delete */
    size_t ndone;
    bool target_down, state_failed;
    size_t cursor;              /* index in todo of the batch's first message */
    const struct inflight *current;     /* the message the fetcher has in hand */
    struct {
        unsigned long listed, delivered, deferred, rejected, bounced, dropped, too_big,
            already, deleted;
        unsigned long long bytes;
    } n;
};

void fetch_msgs_free(struct fetch_msg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(msgs[i].id);
    free(msgs);
}

static const char *status_word(enum dstatus st)
{
    return st == DS_OK ? "delivered" : st == DS_TEMP ? "deferred" : "rejected";
}

/* "to=<a> delivered (250 ...), to=<b> deferred (451 ...)" */
static void describe(char *buf, size_t len, char *const *rcpts, const struct dresult *res,
                     size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && o < len; i++) {
        int w = snprintf(buf + o, len - o, "%sto=<%s> %s (%s)", i ? ", " : "", rcpts[i],
                         status_word(res[i].st), res[i].reply);
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

static bool in_list(char *const *l, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(l[i], s) == 0)
            return true;
    return false;
}

/* The recipients still to be delivered (not in the partial record). */
static size_t pending(const struct md_route *rt, const struct state_rec *rec, char **out)
{
    size_t k = 0;
    for (size_t i = 0; i < rt->nrcpts; i++)
        if (!in_list(rec->rcpts, rec->nrcpts, rt->rcpts[i]))
            out[k++] = rt->rcpts[i];
    return k;
}

static int record(struct run *r, const struct fetch_msg *m, bool done, char **rcpts, size_t n)
{
    if (state_put(r->st, r->a->name, m->id, done, rcpts, n) == 0)
        return 0;
    log_err("%s: id=%s: %s: stopping this run (nothing more is deleted)", r->a->name, m->id,
            state_error(r->st));
    r->state_failed = true;
    return -1;
}

/* A message whose delivery was started: what settle() needs once every
 * recipient has its outcome. mda: programs run while the next messages
 * are fetched, so several can be under way. */
struct inflight {
    struct dmsg dm;             /* first: deliver_finished hands it back */
    struct fetch_msg *m;
    const struct state_rec *rec;
    struct md_route rt;
    char **rcpts;               /* the recipients it goes to now */
    size_t n;
    struct dresult *res;
    const char *body;           /* valid only while r->current is this one */
    size_t len;
};

static void inflight_free(struct inflight *f)
{
    free(f->rcpts);
    free(f->res);
    md_route_free(&f->rt);
    free(f);
}

/* Routes the message; NULL when out of memory. */
static struct inflight *inflight_new(struct run *r, struct fetch_msg *m,
                                     const struct state_rec *rec, const char *body, size_t len)
{
    struct inflight *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    *f = (struct inflight){ .m = m, .rec = rec, .body = body, .len = len };
    if (md_route(body, len, &r->rules, &f->rt) != 0) {
        free(f);
        return NULL;
    }
    f->rcpts = calloc(f->rt.nrcpts + 1, sizeof *f->rcpts);
    f->res = calloc(f->rt.nrcpts + 1, sizeof *f->res);
    if (f->rcpts == NULL || f->res == NULL) {
        inflight_free(f);
        return NULL;
    }
    f->dm.res = f->res;
    f->n = pending(&f->rt, rec, f->rcpts);
    return f;
}

static void log_delivery(const struct run *r, const struct inflight *f)
{
    char desc[1024];
    describe(desc, sizeof desc, f->rcpts, f->res, f->n);
    log_info("%s: id=%s size=%zu from=<%s> via=%s %s", r->a->name, f->m->id, f->len,
             f->rt.sender, f->rt.source, desc);
}

/* A bounce needs the message, which only the fetcher's callback has: the
 * one in hand. smtp: and lmtp: (the only targets that bounce) finish it
 * within the callback. */
static int bounce(struct run *r, const struct inflight *f)
{
    if (f != r->current)
        return -1;
    return deliver_bounce(r->d, f->rt.sender, f->rcpts, f->res, f->n, f->body, f->len);
}

/* What to do after every recipient got an answer. Returns non-zero to stop
 * the batch. */
static int settle(struct run *r, const struct inflight *f)
{
    const struct state_rec *rec = f->rec;
    struct fetch_msg *m = f->m;
    bool temp = false, perm = false;
    char **ok = calloc(rec->nrcpts + f->n + 1, sizeof *ok);
    if (ok == NULL)
        return 1;
    size_t nok = 0;
    for (size_t i = 0; i < rec->nrcpts; i++)
        ok[nok++] = rec->rcpts[i];
    for (size_t i = 0; i < f->n; i++) {
        if (f->res[i].st == DS_OK)
            ok[nok++] = f->rcpts[i];
        temp |= f->res[i].st == DS_TEMP;
        perm |= f->res[i].st == DS_PERM;
    }
    int stop = 0;
    bool done = !temp && !perm;
    if (!temp && perm && r->a->on_reject == REJECT_DELETE) {
        log_warn("%s: id=%s: REJECTED for good and DELETED from the server (on_reject = delete)",
                 r->a->name, m->id);
        r->n.dropped++;
        done = true;
    } else if (!temp && perm && r->a->on_reject == REJECT_BOUNCE) {
        if (bounce(r, f) == 0) {
            log_warn("%s: id=%s: rejected for good, bounced to <%s>", r->a->name, m->id,
                     f->rt.sender);
            r->n.bounced++;
            done = true;
        } else {
            log_warn("%s: id=%s: rejected for good, and the bounce to <%s> failed: kept on "
                     "the server", r->a->name, m->id, f->rt.sender);
        }
    } else if (!temp && perm) {
        log_warn("%s: id=%s: REJECTED for good, KEPT on the server (on_reject = keep): "
                 "see the lines above", r->a->name, m->id);
        r->n.rejected++;
    }
    if (temp)
        r->n.deferred++;
    if (done || nok > rec->nrcpts) {
        if (record(r, m, done, ok, nok) != 0)
            stop = 1;
        else if (done)
            r->done[r->ndone++] = m;
    }
    if (done && !perm)
        r->n.delivered++;
    free(ok);
    return stop;
}

/* Logs, records and frees one message whose delivery finished. */
static int settle_one(struct run *r, struct dmsg *dm)
{
    struct inflight *f = (struct inflight *)dm;
    log_delivery(r, f);
    int stop = settle(r, f);
    inflight_free(f);
    return stop;
}

/* Settles the messages whose delivery finished; WAIT: all that were
 * started, once their programs exited. Non-zero: stop the batch. */
static int settle_finished(struct run *r, bool wait)
{
    int stop = 0;
    struct dmsg *dm;
    while ((dm = deliver_finished(r->d, wait)) != NULL)
        stop |= settle_one(r, dm);
    return stop;
}

/* Before a message is started: what finished is recorded, and when all
 * mda_concurrency programs run, one is waited for. So at most that many
 * messages are ever delivered and not yet recorded, which bounds the
 * second deliveries after a crash; and a run that can no longer record
 * starts nothing more. Non-zero: stop the batch. */
static int make_room(struct run *r)
{
    int stop = settle_finished(r, false);
    while (!stop && deliver_full(r->d)) {
        struct dmsg *dm = deliver_finished(r->d, true);
        if (dm == NULL)
            break;
        stop = settle_one(r, dm);
    }
    return stop;
}

static int on_message(const struct fetch_msg *cm, const char *body, size_t len, void *arg)
{
    struct run *r = arg;
    struct fetch_msg *m = (struct fetch_msg *)cm;
    size_t idx = r->cursor;
    while (idx < r->ntodo && r->todo[idx] != m)
        idx++;
    r->n.bytes += len;
    struct inflight *f = inflight_new(r, m, &r->recs[idx], body, len);
    if (f == NULL) {
        log_err("%s: id=%s: out of memory", r->a->name, m->id);
        return 1;
    }
    if (f->n == 0) {
        /* Every recipient had it already (a partial record completed). */
        int stop = record(r, m, true, NULL, 0) != 0;
        if (!stop)
            r->done[r->ndone++] = m;
        inflight_free(f);
        return stop;
    }
    if (make_room(r) != 0) {
        inflight_free(f);
        return 1;
    }
    if (deliver_start(r->d, &f->dm, f->rt.sender, f->rcpts, f->n, body, len) != 0) {
        log_delivery(r, f);
        log_warn("%s: delivery target %s is unavailable: leaving the rest on the server "
                 "until the next run", r->a->name, r->a->deliver.spec);
        r->target_down = true;
        r->n.deferred++;
        inflight_free(f);
        return 1;
    }
    r->current = f;
    int stop = settle_finished(r, false);
    r->current = NULL;
    return stop || fetchd_stopping;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Forgets records of messages the server no longer has. */
static int prune(struct run *r, struct fetch_msg *msgs, size_t n)
{
    char **ids = calloc(n + 1, sizeof *ids);
    if (ids == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        ids[i] = msgs[i].id;
    qsort(ids, n, sizeof *ids, cmp_id);
    long gone = state_prune(r->st, r->a->name, ids, n);
    free(ids);
    if (gone < 0) {
        log_err("%s: %s", r->a->name, state_error(r->st));
        return -1;
    }
    if (gone > 0)
        log_debug("%s: forgot %ld records of messages no longer on the server", r->a->name, gone);
    return 0;
}

/* Splits the listing into what to delete now and what to fetch. */
static int sort_listing(struct run *r, struct fetch_msg *msgs, size_t n,
                        struct fetch_msg ***stale, size_t *nstale)
{
    const struct fd_account *a = r->a;
    r->todo = calloc(n + 1, sizeof *r->todo);
    r->recs = calloc(n + 1, sizeof *r->recs);
    *stale = calloc(n + 1, sizeof **stale);
    *nstale = 0;
    if (r->todo == NULL || r->recs == NULL || *stale == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        struct state_rec rec;
        int found = state_get(r->st, a->name, msgs[i].id, &rec);
        if (found < 0) {
            log_err("%s: %s", a->name, state_error(r->st));
            return -1;
        }
        if (found && rec.done) {
            r->n.already++;
            if (!a->keep)
                (*stale)[(*nstale)++] = &msgs[i];
            continue;
        }
        if (a->size_limit > 0 && msgs[i].size > a->size_limit) {
            log_warn("%s: id=%s size=%llu: larger than size_limit %llu, left on the server",
                     a->name, msgs[i].id, (unsigned long long)msgs[i].size,
                     (unsigned long long)a->size_limit);
            r->n.too_big++;
            if (found)
                state_rec_free(&rec);
            continue;
        }
        if (a->fetch_limit > 0 && r->ntodo >= (size_t)a->fetch_limit) {
            if (found)
                state_rec_free(&rec);
            continue;
        }
        r->recs[r->ntodo] = found ? rec : (struct state_rec){ 0 };
        r->todo[r->ntodo++] = &msgs[i];
    }
    return 0;
}

/* Every deletion on the server goes through here (POP3 DELE, IMAP STORE
 * and EXPUNGE; QUIT comes later still): the records of M are synced to
 * disk first. */
static int remove_msgs(struct run *r, struct fetcher *f, struct fetch_msg **m, size_t n)
{
    if (n == 0 || r->a->keep)
        return 0;
    if (state_flush(r->st) != 0) {
        log_err("%s: %s: stopping this run (nothing more is deleted)", r->a->name,
                state_error(r->st));
        r->state_failed = true;
        return -1;
    }
    if (f->ops->remove(f, m, n) != FETCH_OK) {
        log_err("%s: deleting on the server: %s", r->a->name, f->err);
        return -1;
    }
    r->n.deleted += n;
    return 0;
}

/* Fetches todo[] in batches. */
static int drain(struct run *r, struct fetcher *f)
{
    const struct fd_account *a = r->a;
    r->done = calloc(r->ntodo + 1, sizeof *r->done);
    if (r->done == NULL)
        return -1;
    size_t i = 0;
    while (i < r->ntodo && !r->target_down && !r->state_failed && !fetchd_stopping) {
        size_t k = 0;
        uint64_t bytes = 0;
        while (i + k < r->ntodo && k < (size_t)a->batch_count
               && (k == 0 || bytes + r->todo[i + k]->size <= a->batch_size))
            bytes += r->todo[i + k++]->size;
        r->cursor = i;
        r->ndone = 0;
        int rc = f->ops->fetch(f, r->todo + i, k, on_message, r);
        /* The programs still running finish and their messages are
         * recorded before anything is deleted (and before an error ends
         * the run: nothing is left running). */
        settle_finished(r, true);
        /* What was recorded is deleted even if the batch stopped early. */
        if (remove_msgs(r, f, r->done, r->ndone) != 0)
            return -1;
        if (rc == FETCH_ERROR) {
            log_err("%s: fetching: %s", a->name, f->err);
            return -1;
        }
        if (r->state_failed)
            return -1;
        i += k;
    }
    return 0;
}

static void summary(const struct run *r, int rc)
{
    log_info("%s: %s: %lu on server, %lu delivered (%llu bytes), %lu deferred, %lu rejected "
             "and kept, %lu bounced, %lu dropped, %lu over size_limit, %lu done before, "
             "%lu deleted",
             r->a->name, rc == 0 ? "done" : "FAILED", r->n.listed, r->n.delivered, r->n.bytes,
             r->n.deferred, r->n.rejected, r->n.bounced, r->n.dropped, r->n.too_big,
             r->n.already, r->n.deleted);
}

void account_close(struct fetcher *f)
{
    if (f == NULL)
        return;
    f->ops->commit(f);
    free(f);
}

int account_run(const struct fd_account *a, struct state *st, struct fetcher **session)
{
    struct run r = { .a = a, .st = st };
    r.rules = (struct md_rules){ a->envelope, a->localdomains, a->nlocaldomains, a->maps,
                                 a->nmaps, a->postmaster };
    struct fetcher *f = calloc(1, sizeof *f);
    struct fetch_msg *msgs = NULL, **stale = NULL;
    size_t n = 0, nstale = 0;
    int rc = -1;
    bool open = false;
    if (session != NULL)
        *session = NULL;
    if (f == NULL)
        return -1;
    f->ops = a->proto == PROTO_POP3 ? &pop3_fetcher_ops : &imap_fetcher_ops;
    f->acct = a;
    open = true;
    if (f->ops->open(f) != FETCH_OK) {
        log_err("%s: %s", a->name, f->err);
        goto out;
    }
    if (f->ops->list(f, &msgs, &n) != FETCH_OK) {
        log_err("%s: listing: %s", a->name, f->err);
        goto out;
    }
    r.n.listed = n;
    if (prune(&r, msgs, n) != 0 || sort_listing(&r, msgs, n, &stale, &nstale) != 0)
        goto out;
    if ((r.d = deliver_new(&a->deliver, (int)a->timeout, (size_t)a->mda_concurrency)) == NULL)
        goto out;
    if (remove_msgs(&r, f, stale, nstale) != 0 || drain(&r, f) != 0)
        goto out;
    if (session != NULL && f->ops->idle_start != NULL && !fetchd_stopping && !r.target_down
        && (f->idle_fd = f->ops->idle_start(f)) >= 0) {
        *session = f;
        f = NULL;
        open = false;
        rc = 0;
        goto out;
    }
    if (f->ops->commit(f) != FETCH_OK) {
        log_err("%s: %s", a->name, f->err);
        open = false;
        goto out;
    }
    open = false;
    rc = r.target_down ? -1 : 0;
out:
    if (f != NULL) {
        if (open)
            f->ops->close(f);
        free(f);
    }
    deliver_free(r.d);
    summary(&r, rc);
    for (size_t i = 0; i < r.ntodo; i++)
        state_rec_free(&r.recs[i]);
    free(r.recs);
    free(r.todo);
    free(r.done);
    free(stale);
    fetch_msgs_free(msgs, n);
    return rc;
}
