/* Internals shared by the scheduler (scheduler.c, sched_ops.c) and the SMTP
 * client (mta.c). A destination is a recipient domain; a job is one
 * message's recipients for one destination, sent in one transaction. */
#ifndef BMX_SCHED_PRIVATE_H
#define BMX_SCHED_PRIVATE_H

#include <stdbool.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "config.h"
#include "queue.h"
#include "scheduler.h"

struct event;
struct evbuffer;
struct mta_conn;

#define SCHED_REPLY_MAX 512

struct job_rcpt {
    uint16_t idx;
    char *addr;
    uint32_t attempts;
    int code;                    /* the reply to RCPT (or to MAIL/DATA) */
    char reply[SCHED_REPLY_MAX];
};

struct job {
    struct job *next;
    struct dest *dest;
    struct queue_envelope env;   /* envelope without its recipient list */
    size_t n;
    struct job_rcpt *rcpt;
};

struct dest {
    struct dest *next;
    char name[256];              /* recipient domain, lower case */
    const struct bmx_domain *dom;/* NULL: not ours (bounces go by MX) */
    bool down;
    int64_t next_probe;          /* while down: no connection before this */
    int64_t backoff;             /* seconds, doubles while down */
    char last_error[256];
    struct job *ready, *ready_tail;
    size_t nready;
    unsigned nconn;
};

struct scheduler {
    struct event_base *base;
    const struct bmx_config *cfg;
    struct queue *q;
    struct dns *dns;
    SSL_CTX *tls;                /* client context */
    struct event *tick_ev;
    struct dest *dests;
    size_t nready;               /* recipients held in ready lists */
    bool refill;                 /* a tick found the lists full */
    struct mta_conn *conns;      /* live connections */
    struct lease **leased;       /* hash set of recipients in memory */
    struct due_scan *due_scans;  /* destinations back up (sched_due.c) */
    struct sched_stats st;
};

/* scheduler.c, for mta.c */
struct job *sched_take_job(struct scheduler *s, struct dest *d);
size_t sched_job_prune(struct scheduler *s, struct job *j);
void sched_job_done(struct scheduler *s, struct job *j, const char *relay);
void sched_dest_failed(struct scheduler *s, struct dest *d, const char *why);
void sched_dest_up(struct scheduler *s, struct dest *d);
void sched_conn_gone(struct scheduler *s, struct dest *d);
void sched_kick(struct scheduler *s);
void job_free(struct job *j);
int64_t sched_lifetime(const struct scheduler *s, const struct dest *d);
bool sched_is_leased(struct scheduler *s, const char *id, uint16_t idx);

/* The domain of a recipient address (after the last @). */
const char *sched_rcpt_domain(const char *addr);

/* sched_due.c: make a destination's deferred recipients due, a few
 * transactions per loop pass. */
void sched_due_start(struct scheduler *s, const char *domain);
void sched_due_free_all(struct scheduler *s);

/* mta.c */
int mta_start(struct scheduler *s, struct dest *d);
void mta_free_all(struct scheduler *s);
SSL_CTX *mta_tls_ctx(void);

/* bounce_queue.c: queue a DSN for the failed recipients of J (or a delay
 * notice); nothing for the null sender. */
void sched_send_dsn(struct scheduler *s, const struct queue_envelope *env,
                    const struct job_rcpt *r, size_t n, bool delayed,
                    const char *remote);

#endif
