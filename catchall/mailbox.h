/* One session's view of a catch-all Maildir: the messages in cur/ (new/ is
 * moved there on open and on rescan) with their UIDs, sizes, flags and
 * INTERNALDATEs. UIDs come from dovecot-uidlist (version 3), written under
 * dovecot-uidlist.lock, so Dovecot and this server agree on them and on
 * POP3 UIDLs (%08X%08X of uid, uidvalidity). */
#ifndef BMX_MAILBOX_H
#define BMX_MAILBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "maildir.h"

struct evbuffer;

struct mbox_msg {
    uint32_t uid;
    uint64_t size;          /* bytes as served, CRLF line ends (RFC822.SIZE) */
    time_t internaldate;    /* the file's mtime */
    unsigned flags;         /* MF_* */
    bool recent;            /* first seen by this session (moved from new/) */
    char *name;             /* current file name in cur/ */
};

struct mailbox;

/* Opens the Maildir DIR (creating it if needed), moves new/ into cur/ and
 * assigns UIDs. Messages are in UID order. NULL with a reason in ERR. */
struct mailbox *mailbox_open(const char *dir, char *err, size_t errlen);
void mailbox_close(struct mailbox *mb);

uint32_t mailbox_uidvalidity(const struct mailbox *mb);
uint32_t mailbox_uidnext(const struct mailbox *mb);
size_t mailbox_count(const struct mailbox *mb);
/* I is 0-based: message sequence number I + 1. */
const struct mbox_msg *mailbox_msg(const struct mailbox *mb, size_t i);
/* 0-based index of UID, or -1. */
long mailbox_find_uid(const struct mailbox *mb, uint32_t uid);

/* Opens message I for reading (O_RDONLY|O_CLOEXEC); the caller closes it.
 * Follows a rename made by another server. -1 with errno ENOENT if the
 * message is gone. */
int mailbox_open_msg(struct mailbox *mb, size_t i);

/* Appends LEN bytes of message I from OFFSET to OUT (LEN may run past the
 * end; it is clipped). Returns the number of bytes added, or -1. */
long mailbox_read(struct mailbox *mb, size_t i, uint64_t offset, uint64_t len, struct evbuffer *out);

/* Size of the header block of message I including the blank line that
 * ends it (the whole message if there is none). -1 on error. */
long mailbox_header_size(struct mailbox *mb, size_t i);

/* Sets message I's flags, renaming the file (the Maildir flag suffix is
 * the only store of flags). */
int mailbox_set_flags(struct mailbox *mb, size_t i, unsigned flags);

/* Unlinks message I and removes it from the view: later messages move
 * down by one. A message already gone counts as removed. */
int mailbox_expunge(struct mailbox *mb, size_t i);

/* Picks up messages delivered since open (or the last rescan), appended
 * in UID order. *ADDED gets how many. */
int mailbox_rescan(struct mailbox *mb, size_t *added);

/* ---- per-process registry ------------------------------------------- */

/* POP3's exclusive maildrop lock (RFC 1939 section 8), by mailbox name,
 * within this process. Returns false if already held. */
bool mailbox_lock(const char *name);
void mailbox_unlock(const char *name);

/* IDLE: callbacks run after the SMTP side delivered into DIR. */
struct mailbox_watch;
struct mailbox_watch *mailbox_watch_add(const char *dir, void (*cb)(void *arg), void *arg);
void mailbox_watch_remove(struct mailbox_watch *w);
void mailbox_notify(const char *dir);

#endif
