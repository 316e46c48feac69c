/* The SMTP side of a catch-all domain: one Maildir copy per accepted
 * recipient, with the envelope written into Return-Path and X-Original-To
 * so that a multidrop puller can route it. */
#ifndef BMX_CATCHALL_STORE_H
#define BMX_CATCHALL_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "catchall_writer.h"
#include "config.h"

struct evbuffer;

enum catchall_quota { CA_QUOTA_OK, CA_QUOTA_FULL, CA_QUOTA_ERROR };

/* Would INCOMING more bytes fit MB's quota? (Always, without a quota.) */
enum catchall_quota catchall_quota_check(const struct bmx_mailbox *mb, uint64_t incoming);

/* Stores MSG (CRLF lines, dot-unstuffed, our Received: on top) once for
 * every I with MBOX[I] != NULL, as a copy for RCPT[I], through the writer
 * thread W. CB(ARG, error) runs on the loop when every copy is on disk
 * (0), or after a failure took back the copies already made (errno).
 * Returns -1 only when nothing could be queued (CB is not called). */
int catchall_store(struct ca_writer *w, const char *host, const char *qid, const char *sender,
                   char *const *rcpt, const struct bmx_mailbox *const *mbox, size_t n,
                   struct evbuffer *msg, ca_done_cb cb, void *arg);

/* The part of catchall_store that needs no disk, for tests: MSG with the
 * sender's own X-Original-To: and Return-Path: header fields renamed to
 * X-Untrusted-Original-To: / X-Untrusted-Return-Path:. Returns a malloc'd
 * buffer and its length in *OUTLEN, or NULL. */
char *catchall_rename_headers(const char *msg, size_t len, size_t *outlen);

#endif
