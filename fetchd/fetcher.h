/* The retrieval side, one implementation per protocol (pop3_fetch.c,
 * imap_fetch.c) behind a small table of functions, driven by account.c:
 *
 *   open     connect, TLS and its certificate check, log in (and SELECT)
 *   list     every message on the server: stable id, number, size
 *   fetch    a batch of messages, handed one by one to a callback
 *   remove   mark messages for deletion (DELE / UID STORE +FLAGS \Deleted)
 *   commit   make the deletions happen (QUIT / EXPUNGE) and log out
 *   close    drop the connection (without committing, after an error)
 */
#ifndef FETCHD_FETCHER_H
#define FETCHD_FETCHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fetchd_conf.h"

struct fetch_msg {
    char *id;                   /* UIDL, or MAILBOX/UIDVALIDITY/UID */
    uint32_t num;               /* POP3 message number or IMAP UID */
    uint64_t size;
};

/* Called for each fetched message, in the order given. The body has CRLF
 * line ends and is only valid during the call. Returning non-zero stops
 * the batch (the fetcher returns FETCH_STOPPED). */
typedef int (*fetch_cb)(const struct fetch_msg *m, const char *body, size_t len, void *arg);

enum { FETCH_OK = 0, FETCH_ERROR = -1, FETCH_STOPPED = -2 };

struct fetcher;

struct fetcher_ops {
    const char *name;
    int (*open)(struct fetcher *f);
    int (*list)(struct fetcher *f, struct fetch_msg **msgs, size_t *n);
    int (*fetch)(struct fetcher *f, struct fetch_msg *const *msgs, size_t n, fetch_cb cb,
                 void *arg);
    int (*remove)(struct fetcher *f, struct fetch_msg *const *msgs, size_t n);
    int (*commit)(struct fetcher *f);
    void (*close)(struct fetcher *f);
    /* Daemon mode, optional (IMAP IDLE): start waiting for news on an
     * open session, returning the descriptor to poll (-1: not available),
     * and end the wait. */
    int (*idle_start)(struct fetcher *f);
    int (*idle_done)(struct fetcher *f);
};

struct fetcher {
    const struct fetcher_ops *ops;
    const struct fd_account *acct;
    char err[512];              /* why the last call failed */
    int idle_fd;                /* while idling (daemon mode) */
    void *impl;
};

extern const struct fetcher_ops pop3_fetcher_ops;
extern const struct fetcher_ops imap_fetcher_ops;

void fetch_msgs_free(struct fetch_msg *msgs, size_t n);

/* -v protocol traces (passwords masked), shared by both fetchers. */
void trace_protocol(const struct fd_account *a, int log_type, const char *str, size_t size);

#endif
