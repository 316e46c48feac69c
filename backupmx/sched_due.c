/* A destination back up after an outage: every deferred recipient of it is
 * made due now. That rewrites each of them, which with a million queued
 * takes seconds, so the scan runs a few transactions per loop pass and the
 * loop serves SMTP sessions and deliveries in between; what it has made
 * due is delivered while it goes on. */
#include "sched_private.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>

#include "log.h"

#define DUE_SCAN_BATCHES 4       /* transactions of 1000 records per pass */

struct due_scan {
    struct scheduler *s;
    struct due_scan *next;
    struct queue_scan *sc;
    struct event *ev;
    char domain[256];
};

/* A recipient already pulled for delivery keeps its lease: made due, it
 * would come back from the index on every tick while it is in flight. */
static bool make_due_fn(const char *id, uint16_t idx, struct queue_rcpt *r, void *arg)
{
    struct due_scan *ds = arg;
    if (r->state != RCPT_DEFERRED || sched_is_leased(ds->s, id, idx) ||
        strcasecmp(sched_rcpt_domain(r->addr), ds->domain) != 0)
        return false;
    r->next_attempt = (int64_t)time(NULL);
    return true;
}

static void due_scan_free(struct due_scan *ds)
{
    struct due_scan **pp = &ds->s->due_scans;
    while (*pp != NULL && *pp != ds)
        pp = &(*pp)->next;
    if (*pp != NULL)
        *pp = ds->next;
    if (ds->ev != NULL)
        event_free(ds->ev);
    queue_rcpt_scan_free(ds->sc);
    free(ds);
}

static void due_scan_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    static const struct timeval zero = { 0, 0 };
    struct due_scan *ds = arg;
    int rc = queue_rcpt_scan_step(ds->s->q, ds->sc, DUE_SCAN_BATCHES);
    sched_kick(ds->s);
    if (rc == 0) {
        event_add(ds->ev, &zero);   /* after this pass's I/O */
        return;
    }
    if (rc == 1)
        log_info("destination %s is up again: %zu recipients due now", ds->domain,
                 queue_rcpt_scan_changed(ds->sc));
    else
        log_warn("destination %s is up again: making its recipients due failed; "
                 "they go at their next retry time", ds->domain);
    due_scan_free(ds);
}

/* A scan already under way for DOMAIN starts over: the recipients it has
 * passed may have failed again since. */
void sched_due_start(struct scheduler *s, const char *domain)
{
    for (struct due_scan *ds = s->due_scans; ds != NULL; ds = ds->next)
        if (strcasecmp(ds->domain, domain) == 0) {
            due_scan_free(ds);
            break;
        }
    struct due_scan *ds = calloc(1, sizeof *ds);
    if (ds == NULL)
        goto fail;
    ds->s = s;
    snprintf(ds->domain, sizeof ds->domain, "%s", domain);
    ds->sc = queue_rcpt_scan_begin(make_due_fn, ds);
    ds->ev = evtimer_new(s->base, due_scan_cb, ds);
    if (ds->sc == NULL || ds->ev == NULL) {
        queue_rcpt_scan_free(ds->sc);
        if (ds->ev != NULL)
            event_free(ds->ev);
        free(ds);
        goto fail;
    }
    ds->next = s->due_scans;
    s->due_scans = ds;
    event_active(ds->ev, EV_TIMEOUT, 0);
    log_info("destination %s answers again: making its deferred recipients due", domain);
    return;
fail:
    log_warn("destination %s is up again: out of memory; its recipients go at their "
             "next retry time", domain);
}

/* At a stop the rest stays deferred: the destination is probed again after
 * the restart, and found up, scanned again. */
void sched_due_free_all(struct scheduler *s)
{
    while (s->due_scans != NULL)
        due_scan_free(s->due_scans);
}
