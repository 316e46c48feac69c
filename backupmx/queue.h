/* The durable mail queue: a Berkeley DB 5.3 transactional environment under
 * the spool directory, owned by the one daemon process.
 *
 * Durability contract: queue_store() commits with DB_TXN_NOSYNC and parks
 * the caller's callback; all commits made in one pass of the event loop are
 * made durable by ONE log flush (group commit), and only then are their
 * callbacks run (with error 0), so an SMTP "250" sent from the callback is
 * always backed by data on disk. */
#ifndef BMX_QUEUE_H
#define BMX_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct event_base;
struct evbuffer;
struct queue;

#define QUEUE_ID_LEN 16          /* fixed-width, base32, sorts by arrival */

enum rcpt_state {
    RCPT_DEFERRED = 0,           /* waiting for its next attempt */
    RCPT_ACTIVE = 1,             /* a delivery attempt is in progress */
    RCPT_HELD = 2,               /* operator hold: never delivered */
    RCPT_DONE = 3,               /* next hop said 250 */
};

struct queue_rcpt {
    char *addr;                  /* "local@domain", no brackets */
    char *orcpt;                 /* DSN ORCPT, or NULL */
    enum rcpt_state state;
    uint32_t attempts;
    int64_t next_attempt;        /* unix time */
    char *last_error;            /* last reply or reason, or NULL */
};

struct queue_envelope {
    char id[QUEUE_ID_LEN + 1];
    char *sender;                /* "" for the null sender <> */
    char *helo;
    char *client_addr;           /* textual IP */
    char *client_name;           /* reverse name or "unknown" */
    int64_t arrival;             /* unix time */
    uint64_t size;               /* body bytes as stored (with our Received) */
    uint32_t flags;              /* QENV_* */
    size_t nrcpt;
    struct queue_rcpt *rcpt;
};

#define QENV_8BITMIME  0x01      /* BODY=8BITMIME was given */
#define QENV_SMTPUTF8  0x02      /* SMTPUTF8 was given */

/* Called once the commit is durable (error == 0), or failed (error != 0:
 * nothing was stored, answer 451/452). */
typedef void (*queue_stored_cb)(void *arg, int error);

struct queue_opts {
    bool readonly;               /* tools: no recovery, no writes */
    size_t inline_max;           /* bodies above this go to spool files */
    size_t cache_bytes;          /* BDB cache */
    /* Stores fail with ENOSPC while the spool filesystem has less than this
     * free (plus the body): Berkeley DB must never meet a full disk, or it
     * panics and even recovery needs space. 0 = the cache size plus two log
     * files (96 MB with the default cache). */
    uint64_t min_free;
};

/* Opens (creating and recovering as needed) the environment in SPOOL.
 * Returns NULL and logs why on failure. */
struct queue *queue_open(const char *spool, const struct queue_opts *opts);
/* Flushes, checkpoints and closes. Call it before freeing the event base,
 * and not from inside a queue_stored_cb. Callbacks still parked are NOT
 * called (their messages are durable all the same). */
void queue_close(struct queue *q);

/* Enables group commit and periodic checkpoints on BASE. Required before
 * queue_store(). */
int queue_attach(struct queue *q, struct event_base *base);

/* New unique queue id (time + counter, unique across restarts) into ID. */
void queue_new_id(struct queue *q, char id[QUEUE_ID_LEN + 1]);

/* Stores a message: ENV (env->id already set by queue_new_id) and the body
 * in BODY (CRLF line ends, dot-unstuffed, our Received first; not consumed).
 * Returns 0 when the commit is under way (CB will be called later, never
 * from inside this call), -1 on an immediate failure (CB is not called;
 * errno is ENOSPC when the disk is full). */
int queue_store(struct queue *q, const struct queue_envelope *env,
                struct evbuffer *body, queue_stored_cb cb, void *arg);

/* Read side, for tools and tests. queue_walk calls FN for each message in
 * id order until it returns non-zero; ENV is only valid during the call.
 * Returns FN's non-zero value, 0 at the end, or -1 on an error; a corrupt
 * record is logged and skipped, and makes the walk return -1 at the end.
 * FN may use the queue (no cursor is held across the call). */
typedef int (*queue_walk_fn)(const struct queue_envelope *env, void *arg);
int queue_walk(struct queue *q, queue_walk_fn fn, void *arg);
/* A walk in bounded steps, for a caller that must not hold the event loop
 * (the control socket's list): FN is called for at most MAX messages with
 * ids above AFTER_ID (NULL or "" = from the first), in id order. Returns 0
 * when the end of the queue was reached, QUEUE_WALK_MORE when FN was called
 * MAX times (resume with the last id FN saw; AFTER_ID need not exist any
 * more), FN's non-zero value when it stopped the walk (so FN must not
 * return QUEUE_WALK_MORE), or -1 on an error. Corrupt records are logged
 * and skipped without changing the result. */
#define QUEUE_WALK_MORE (-2)
int queue_walk_from(struct queue *q, const char *after_id, size_t max,
                    queue_walk_fn fn, void *arg);

/* Loads one message's envelope and (if body != NULL) appends its body.
 * Returns 0, 1 when there is no such id, -1 on error. */
int queue_get(struct queue *q, const char *id, struct queue_envelope *env,
              struct evbuffer *body);
void queue_envelope_free(struct queue_envelope *env);

struct queue_stats {
    uint64_t commits;            /* queue_store commits since open */
    uint64_t flushes;            /* log flushes those commits took */
    uint64_t max_batch;          /* most stores made durable by one flush */
    uint64_t flush_usec;         /* time the loop spent waiting in flushes */
};
void queue_get_stats(const struct queue *q, struct queue_stats *st);

/* ---- the recipient verification cache (queue_cache.c) -------------------
 * verify.db in the same environment: KEY (a string, stored as given, so
 * callers lower-case addresses) -> an entry. Writes commit with
 * DB_TXN_NOSYNC: a cache needs no durability, the next group flush or
 * checkpoint takes them to disk. A read-only queue has no cache: every call
 * fails with EROFS. */
struct queue_cache_entry {
    int value;                   /* the caller's verdict (verify: 1 yes, 0 no) */
    int64_t stored;              /* unix time it was learned */
    int64_t expires;             /* unix time it stops counting */
};

/* 0 with *E filled (expired entries too: compare E->expires yourself), 1
 * when KEY has no entry (or a corrupt one, logged), -1 on error. */
int queue_cache_get(struct queue *q, const char *key,
                    struct queue_cache_entry *e);
/* Creates or replaces KEY's entry. 0, or -1 on error (logged). */
int queue_cache_put(struct queue *q, const char *key,
                    const struct queue_cache_entry *e);
/* Removes the entries that expired at or before NOW, looking at no more than
 * MAX entries, from the key in *RESUME on (malloc'd; NULL = from the start).
 * *RESUME is left at the next key to look at, NULL once the end was reached.
 * Returns the number removed, or -1 on error. */
long queue_cache_purge(struct queue *q, int64_t now, size_t max,
                       char **resume);

/* ---- the delivery side (queue_update.c): scheduler and bmxq -------------
 * Updates commit with DB_TXN_WRITE_NOSYNC: in the log file at once (a crash
 * of the daemon keeps them), on the disk within 100 ms. Losing one at a
 * power loss can only make a recipient be tried again (a duplicate), never
 * lose mail, because a recipient becomes DONE only after the next hop's 250. */
struct queue_due {
    char id[QUEUE_ID_LEN + 1];
    uint16_t idx;                /* recipient index within the message */
    int64_t next_attempt;
};

/* Fills OUT with up to MAX deferred recipients whose next_attempt <= NOW,
 * earliest first (schedule index; nothing else is read). Returns the count
 * or -1. */
int queue_due(struct queue *q, int64_t now, struct queue_due *out, size_t max);

/* Rewrites recipient IDX of message ID with R (state, attempts,
 * next_attempt, last_error; the address is kept). When every recipient of
 * the message is then DONE, the message (and its body file) is deleted in
 * the same transaction and *GONE is set. Returns 0, 1 when there is no such
 * message or recipient, -1 on error. */
int queue_rcpt_update(struct queue *q, const char *id, uint16_t idx,
                      const struct queue_rcpt *r, bool *gone);

/* Sets the message's flags word (QENV_*). 0, 1 (no such message), -1. */
int queue_set_flags(struct queue *q, const char *id, uint32_t flags);

/* Deletes a message, its recipients and its body. 0, 1 (no such), -1. */
int queue_delete(struct queue *q, const char *id);

/* Calls FN for every recipient (of message ID, or of all messages when ID
 * is NULL), in key order; when FN returns true the recipient as FN left it
 * is written back (the address must not change). Works in transactions of
 * 1000 records, so it never holds the whole queue locked. */
typedef bool (*queue_rcpt_fn)(const char *id, uint16_t idx, struct queue_rcpt *r,
                              void *arg);
int queue_rcpt_scan(struct queue *q, const char *id, queue_rcpt_fn fn, void *arg,
                    size_t *changed);
/* The same scan over all messages, a few transactions at a time, for the
 * event loop: queue_rcpt_scan_step() runs at most BATCHES of them and
 * returns 1 when the scan is finished, 0 when more is left, -1 on an
 * error. */
struct queue_scan;
struct queue_scan *queue_rcpt_scan_begin(queue_rcpt_fn fn, void *arg);
int queue_rcpt_scan_step(struct queue *q, struct queue_scan *sc, unsigned batches);
size_t queue_rcpt_scan_changed(const struct queue_scan *sc);
void queue_rcpt_scan_free(struct queue_scan *sc);

#define QENV_WARNED    0x04      /* the delay notice has been sent */

#endif
