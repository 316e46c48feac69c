/* dovecot-uidlist, version 3: the UID map of a Maildir shared with Dovecot.
 *
 *   3 V<uidvalidity> N<nextuid> G<32 hex digits>[ <other header fields>]
 *   <uid>[ <ext fields, e.g. W1234>] :<file name up to its ':'>
 *
 * Reading needs no lock. Writing takes the dotlock dovecot-uidlist.lock
 * (O_EXCL; stale after 120 s, as Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT),
 * writes the whole new file into the lock file and renames it over
 * dovecot-uidlist, which publishes the file and releases the lock at once.
 * Dovecot itself may append lines in place while holding the lock, and
 * keeps lines of expunged files until it rewrites the file. */
#ifndef BMX_UIDLIST_H
#define BMX_UIDLIST_H

#include <stddef.h>
#include <stdint.h>

#define UIDLIST_NAME "dovecot-uidlist"
#define UIDLIST_LOCK_NAME "dovecot-uidlist.lock"
#define UIDLIST_LOCK_STALE 120      /* seconds */
#define UIDLIST_LOCK_WAIT_MS 5000

struct uidlist_rec {
    uint32_t uid;
    char *ext;          /* the fields between the UID and ':', or NULL */
    char *base;         /* the file name up to its first ':' */
};

struct uidlist {
    uint32_t uidvalidity;
    uint32_t nextuid;
    char guid[33];      /* 32 hex digits, or "" (one is made when written) */
    char *hdr_ext;      /* header fields other than V N G, kept, or NULL */
    struct uidlist_rec *recs;
    size_t count, cap;
    struct uidlist_rec **by_name;   /* recs sorted by base, for lookups */
    size_t nindexed;
};

/* Reads DIR/dovecot-uidlist into UL (zeroed first). Returns 1, or 0 if
 * there is no file (UL is then empty), or -1: errno, EBADMSG for a file
 * whose header is not version 3 with V and N. Malformed record lines are
 * skipped; an unfinished last line (Dovecot appending) is ignored. */
int uidlist_read(const char *dir, struct uidlist *ul);

/* A fresh header: V = now, N = 1, a random G. */
void uidlist_init(struct uidlist *ul);

/* Appends a record (the caller keeps UIDs ascending). EXT may be NULL.
 * -1 on ENOMEM. */
int uidlist_add(struct uidlist *ul, uint32_t uid, const char *ext, const char *base,
                size_t baselen);

/* The record for the file whose base name is BASE (BASELEN bytes), or
 * NULL. When a name is listed twice the later (higher) UID wins, as in
 * Dovecot. Meant for a list from uidlist_read (which builds the index);
 * after uidlist_add the index is rebuilt, and NULL may then also mean
 * ENOMEM. */
const struct uidlist_rec *uidlist_find(struct uidlist *ul, const char *base, size_t baselen);

void uidlist_free(struct uidlist *ul);

/* Takes the dotlock of DIR, waiting up to UIDLIST_LOCK_WAIT_MS and
 * breaking a stale one. Returns the lock file's descriptor, or -1
 * (ETIMEDOUT when somebody kept it). */
int uidlist_lock(const char *dir);

/* Writes UL into the lock file LOCKFD, fsyncs it, renames it over
 * dovecot-uidlist and fsyncs DIR. LOCKFD is closed and the lock released
 * whatever happens. Records are written in UID order. */
int uidlist_commit(const char *dir, int lockfd, struct uidlist *ul);

/* Releases the lock without writing. */
void uidlist_unlock(const char *dir, int lockfd);

#endif
