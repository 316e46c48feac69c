/* The scheduler: decides when each queued recipient is tried, groups them by
 * destination, keeps per-destination backoff (one probe per interval while
 * a primary is down), and hands work to the SMTP client (mta.c). */
#ifndef BMX_SCHEDULER_H
#define BMX_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct event_base;
struct queue;
struct dns;
struct scheduler;

struct scheduler *scheduler_new(struct event_base *base, const struct bmx_config *cfg,
                                struct queue *q, struct dns *dns);
void scheduler_free(struct scheduler *s);

/* Operator and ETRN requests. WHAT is NULL (everything), a queue id, or a
 * domain. Each returns the number of messages affected (0 is fine), or -1
 * on an error; -2 when WHAT is an id that is not in the queue. */
int scheduler_flush(struct scheduler *s, const char *what);   /* due now */
int scheduler_hold(struct scheduler *s, const char *what);    /* never delivered */
int scheduler_release(struct scheduler *s, const char *what); /* held -> due now */
int scheduler_delete(struct scheduler *s, const char *what);  /* removed, no DSN */
int scheduler_bounce(struct scheduler *s, const char *what);  /* DSN now, removed */

/* When a recipient for ADDR arriving NOW is first worth trying: now, or
 * while its destination is known to be down, that destination's next
 * probe. Mail that comes in during an outage is then not read back and
 * rewritten by the scheduler only to wait for that probe. */
int64_t scheduler_first_attempt(struct scheduler *s, const char *addr, int64_t now);

/* True while recipient IDX of message ID is being delivered. */
bool scheduler_active(struct scheduler *s, const char *id, uint16_t idx);

struct sched_dest_info {
    char name[256];              /* domain, or host[:port] of a fixed primary */
    bool down;
    int64_t next_probe;          /* unix time */
    char last_error[256];
};

struct sched_stats {
    uint64_t delivered;          /* recipients sent since start */
    uint64_t bounced;            /* recipients bounced since start */
    uint64_t deferred;           /* delivery attempts that were deferred */
    size_t ndown;
    struct sched_dest_info down[32];  /* the first 32 destinations down */
};
void scheduler_stats(struct scheduler *s, struct sched_stats *st);

#endif
