/* Local delivery of fetched messages: smtp:HOST:PORT, lmtp:/socket or
 * lmtp:HOST:PORT (deliver_smtp.c), mda:COMMAND (deliver_mda.c). One
 * deliverer per account run: SMTP and LMTP keep one connection for the
 * whole run; mda: runs up to mda_concurrency programs at once, so that a
 * message is fetched while the programs of the previous ones run. */
#ifndef FETCHD_DELIVER_H
#define FETCHD_DELIVER_H

#include <stdbool.h>
#include <stddef.h>

#include "fetchd_conf.h"

enum dstatus { DS_OK, DS_TEMP, DS_PERM };

struct dresult {
    enum dstatus st;
    char reply[200];            /* the server's reply or the MDA's status */
};

/* One message under way, embedded by the caller in its own bookkeeping
 * and handed back by deliver_finished once res[0..n-1] are all known. */
struct dmsg {
    struct dresult *res;        /* set by the caller, n of them */
    size_t running;             /* mda: programs still running for it */
    struct dmsg *next;          /* in a struct dlist */
};

/* Finished messages, oldest first. */
struct dlist {
    struct dmsg *head, **tail;
};
void dlist_push(struct dlist *l, struct dmsg *dm);

struct deliverer;

/* PARALLEL: how many mda: programs may run at once (1 for smtp/lmtp). */
struct deliverer *deliver_new(const struct fd_target *t, int timeout, size_t parallel);
/* Waits for programs still running (their outcome is dropped: the caller
 * collects every message with deliver_finished before). */
void deliver_free(struct deliverer *d);

/* Starts delivering MSG (CRLF lines, as fetched, only read during the
 * call) from SENDER ("" = <>) to each of RCPTS; dm->res[i] will be the
 * outcome for rcpts[i]. smtp: and lmtp: deliver before returning; mda:
 * returns once the message is written to its program(s), after waiting
 * for one to exit when PARALLEL are running. Returns 0: DM will come
 * back from deliver_finished; -1: the target could not be reached at all
 * (every res[i] is DS_TEMP, DM is not kept). */
int deliver_start(struct deliverer *d, struct dmsg *dm, const char *sender, char *const *rcpts,
                  size_t n, const char *msg, size_t len);

/* A started message whose every recipient has its outcome, or NULL when
 * none is ready. WAIT: wait for the programs still running; then NULL
 * means that nothing is under way any more. */
struct dmsg *deliver_finished(struct deliverer *d, bool wait);

/* True while as many mda: programs run as may: deliver_start would wait. */
bool deliver_full(const struct deliverer *d);

/* deliver_start and deliver_finished in one, for one message: res[i] is
 * the outcome for rcpts[i]. Returns 0, or -1 when the target could not be
 * reached at all (every res[i] is then DS_TEMP). */
int deliver_message(struct deliverer *d, const char *sender, char *const *rcpts, size_t n,
                    const char *msg, size_t len, struct dresult *res);

/* Back ends. */
struct smtp_client;
struct smtp_client *smtp_client_new(const struct fd_target *t, int timeout);
void smtp_client_free(struct smtp_client *c);
int smtp_deliver(struct smtp_client *c, const char *sender, char *const *rcpts, size_t n,
                 const char *msg, size_t len, struct dresult *res);

int mda_deliver(const struct fd_target *t, const char *sender, char *const *rcpts, size_t n,
                const char *msg, size_t len, struct dresult *res);

/* mda: with up to MAX programs running while the next message is
 * fetched. A message whose programs all exited goes to DONE. */
struct mda_pool;
struct mda_pool *mda_pool_new(const struct fd_target *t, size_t max);
void mda_pool_free(struct mda_pool *p);
void mda_start(struct mda_pool *p, struct dmsg *dm, const char *sender, char *const *rcpts,
               size_t n, const char *msg, size_t len, struct dlist *done);
/* Collects the programs that exited; WAIT: at least one, if any runs.
 * Returns the number still running. */
size_t mda_reap(struct mda_pool *p, bool wait, struct dlist *done);
bool mda_full(const struct mda_pool *p);

/* A DSN (RFC 3464) to SENDER for the recipients of MSG that were refused
 * for good, sent through D with the null sender. 0 when it was accepted. */
int deliver_bounce(struct deliverer *d, const char *sender, char *const *rcpts,
                   const struct dresult *res, size_t n, const char *msg, size_t len);

#endif
