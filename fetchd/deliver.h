/* Local delivery of fetched messages: smtp:HOST:PORT, lmtp:/socket or
 * lmtp:HOST:PORT (deliver_smtp.c), mda:COMMAND (deliver_mda.c). One
 * deliverer per account run: SMTP and LMTP keep one connection for the
 * whole run. */
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

struct deliverer;

struct deliverer *deliver_new(const struct fd_target *t, int timeout);
void deliver_free(struct deliverer *d);

/* Delivers MSG (CRLF lines, as fetched) from SENDER ("" = <>) to each of
 * RCPTS; res[i] is the outcome for rcpts[i]. Returns 0, or -1 when the
 * target could not be reached at all (every res[i] is then DS_TEMP). */
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

/* A DSN (RFC 3464) to SENDER for the recipients of MSG that were refused
 * for good, sent through D with the null sender. 0 when it was accepted. */
int deliver_bounce(struct deliverer *d, const char *sender, char *const *rcpts,
                   const struct dresult *res, size_t n, const char *msg, size_t len);

#endif
