/* Delivery dispatch: the target kind picks the back end. SMTP and LMTP
 * deliver one message at a time over their connection; mda: programs run
 * side by side (deliver_mda.c), so finished messages are queued until the
 * caller collects them. */
#include "deliver.h"

#include <stdlib.h>

struct deliverer {
    const struct fd_target *t;
    struct smtp_client *smtp;
    struct mda_pool *mda;
    struct dlist done;
};

void dlist_push(struct dlist *l, struct dmsg *dm)
{
    dm->next = NULL;
    *l->tail = dm;
    l->tail = &dm->next;
}

static struct dmsg *dlist_pop(struct dlist *l)
{
    struct dmsg *dm = l->head;
    if (dm == NULL)
        return NULL;
    l->head = dm->next;
    if (l->head == NULL)
        l->tail = &l->head;
    return dm;
}

struct deliverer *deliver_new(const struct fd_target *t, int timeout, size_t parallel)
{
    struct deliverer *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->t = t;
    d->done.tail = &d->done.head;
    if (t->kind == DELIVER_MDA)
        d->mda = mda_pool_new(t, parallel);
    else
        d->smtp = smtp_client_new(t, timeout);
    if (d->mda == NULL && d->smtp == NULL) {
        free(d);
        return NULL;
    }
    return d;
}

void deliver_free(struct deliverer *d)
{
    if (d == NULL)
        return;
    smtp_client_free(d->smtp);
    mda_pool_free(d->mda);
    free(d);
}

int deliver_start(struct deliverer *d, struct dmsg *dm, const char *sender, char *const *rcpts,
                  size_t n, const char *msg, size_t len)
{
    if (d->mda != NULL) {
        mda_start(d->mda, dm, sender, rcpts, n, msg, len, &d->done);
        return 0;
    }
    if (smtp_deliver(d->smtp, sender, rcpts, n, msg, len, dm->res) != 0)
        return -1;
    dlist_push(&d->done, dm);
    return 0;
}

struct dmsg *deliver_finished(struct deliverer *d, bool wait)
{
    if (d->done.head == NULL && d->mda != NULL)
        mda_reap(d->mda, false, &d->done);
    while (d->done.head == NULL && wait && d->mda != NULL && mda_reap(d->mda, true, &d->done) > 0)
        ;
    return dlist_pop(&d->done);
}

bool deliver_full(const struct deliverer *d)
{
    return d->mda != NULL && mda_full(d->mda);
}

int deliver_message(struct deliverer *d, const char *sender, char *const *rcpts, size_t n,
                    const char *msg, size_t len, struct dresult *res)
{
    if (d->t->kind == DELIVER_MDA)
        return mda_deliver(d->t, sender, rcpts, n, msg, len, res);
    return smtp_deliver(d->smtp, sender, rcpts, n, msg, len, res);
}
