/* A thread that writes catch-all copies in batches (group commit for
 * Maildirs), so that SMTP sessions do not wait on each other's fsyncs and
 * the event loop never blocks on the disk. */
#ifndef BMX_CATCHALL_WRITER_H
#define BMX_CATCHALL_WRITER_H

#include <stddef.h>

#include "config.h"

struct event_base;
struct ca_writer;

/* Runs on the event loop: 0 when every copy of the message is on disk,
 * else an errno (and no copy of it is left in any new/). */
typedef void (*ca_done_cb)(void *arg, int error);

struct ca_copy {
    const struct bmx_mailbox *mb;
    char *rcpt;
};

struct ca_writer *ca_writer_new(struct event_base *base);
/* Finishes what was submitted, runs every callback, stops the thread. */
void ca_writer_free(struct ca_writer *w);

/* Takes BODY (malloc'd, BLEN bytes: the message with the sender's envelope
 * headers renamed), COPIES (malloc'd array of N, rcpt strings malloc'd)
 * and SENDER's copy; writes one file per copy with Return-Path and
 * X-Original-To on top, then calls CB(ARG, error) on the loop. Returns -1
 * (nothing taken, errno set) only when the job cannot be queued. */
int ca_writer_submit(struct ca_writer *w, const char *host, const char *qid,
                     const char *sender, char *body, size_t blen,
                     struct ca_copy *copies, size_t n, ca_done_cb cb, void *arg);

#endif
