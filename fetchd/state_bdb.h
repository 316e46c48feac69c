/* Exactly-once bookkeeping: which server messages (per account, by POP3
 * UIDL or IMAP MAILBOX/UIDVALIDITY/UID) were already delivered, in a small
 * transactional Berkeley DB environment under the state directory. Records
 * are committed one by one and synced to disk together (state_flush) before
 * their messages are deleted on the server. */
#ifndef FETCHD_STATE_BDB_H
#define FETCHD_STATE_BDB_H

#include <stdbool.h>
#include <stddef.h>

struct state;

/* What is known about one message. */
struct state_rec {
    bool done;                  /* delivered to every recipient (or given up) */
    char **rcpts;               /* partial: recipients already delivered to */
    size_t nrcpts;
};

/* Opens (creating, running recovery) the environment in DIR. NULL with a
 * reason in ERR. Only one process may have it open: take the lock first. */
struct state *state_open(const char *dir, char *err, size_t errlen);
void state_close(struct state *st);

/* 1 = found (*rec filled), 0 = not found, -1 = error. */
int state_get(struct state *st, const char *account, const char *id, struct state_rec *rec);
void state_rec_free(struct state_rec *rec);

/* Records a message as done, or partially delivered to RCPTS; on return 0
 * the transaction is committed and written to the log file, which
 * survives fetchd's death but not yet the machine's: see state_flush. */
int state_put(struct state *st, const char *account, const char *id, bool done,
              char *const *rcpts, size_t nrcpts);

/* Syncs every record committed so far to disk. Call it, and check it,
 * before deleting on the server a message recorded as done. */
int state_flush(struct state *st);

/* Forgets the records of ACCOUNT whose id is not among IDS (sorted with
 * strcmp): the server no longer has those messages. Returns the number
 * removed, or -1. */
long state_prune(struct state *st, const char *account, char *const *ids, size_t nids);

/* Checkpoint and log clean-up, e.g. at the end of a run. */
void state_checkpoint(struct state *st);

const char *state_error(const struct state *st);

#endif
