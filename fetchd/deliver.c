/* Delivery dispatch: the target kind picks the back end. */
#include "deliver.h"

#include <stdlib.h>

struct deliverer {
    const struct fd_target *t;
    struct smtp_client *smtp;
};

struct deliverer *deliver_new(const struct fd_target *t, int timeout)
{
    struct deliverer *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->t = t;
    if (t->kind != DELIVER_MDA && (d->smtp = smtp_client_new(t, timeout)) == NULL) {
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
    free(d);
}

int deliver_message(struct deliverer *d, const char *sender, char *const *rcpts, size_t n,
                    const char *msg, size_t len, struct dresult *res)
{
    if (d->t->kind == DELIVER_MDA)
        return mda_deliver(d->t, sender, rcpts, n, msg, len, res);
    return smtp_deliver(d->smtp, sender, rcpts, n, msg, len, res);
}
