/* Recipient verification by callout to the primary (verify = true): ask the
 * primary "RCPT TO:<addr>" while it answers, remember its verdict in the
 * queue's BDB environment (positive for the domain's verify_ttl, default 31
 * days, so the cache keeps vouching while the primary is down; negative for
 * 1 hour), and say "unavailable" when neither the primary nor the cache can
 * vouch. The caller applies `unverified`. */
#ifndef BMX_VERIFY_H
#define BMX_VERIFY_H

#include "config.h"

struct event_base;
struct queue;
struct verify;
struct verify_req;

enum verify_result {
    VERIFY_OK = 0,               /* the primary accepts it (now or cached) */
    VERIFY_UNKNOWN,              /* the primary refused it with 5xx */
    VERIFY_UNAVAILABLE,          /* nobody can tell right now */
};

typedef void (*verify_cb)(void *arg, enum verify_result r);

struct verify *verify_new(struct event_base *base, const struct bmx_config *cfg,
                          struct queue *q);
void verify_free(struct verify *v);

/* Starts checking ADDR ("local@domain", domain lower case) of domain D.
 * CB is always called later from the event loop, exactly once, unless the
 * request is cancelled first. Returns NULL on ENOMEM (CB not called). */
struct verify_req *verify_start(struct verify *v, const struct bmx_domain *d,
                                const char *addr, verify_cb cb, void *arg);
void verify_cancel(struct verify_req *r);

#endif
