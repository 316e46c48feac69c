/* Maildir primitives shared by the SMTP store and the POP3/IMAP servers:
 * unique names, Dovecot's ,S=,W= size fields, the :2, flag suffix, and
 * the tmp -> fsync -> link(new) -> fsync(dir) delivery. Files are stored
 * with CRLF line ends, so S= and W= are equal and a file is served as is. */
#ifndef BMX_MAILDIR_H
#define BMX_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* IMAP system flags; the Maildir letters are D F R S T (and P, kept). */
enum {
    MF_SEEN = 1 << 0,       /* S */
    MF_ANSWERED = 1 << 1,   /* R */
    MF_FLAGGED = 1 << 2,    /* F */
    MF_DELETED = 1 << 3,    /* T */
    MF_DRAFT = 1 << 4,      /* D */
    MF_PASSED = 1 << 5,     /* P: no IMAP flag, kept across renames */
};

/* Creates DIR and its tmp, new and cur (mode 0700) if missing. */
int maildir_ensure(const char *dir, char *err, size_t errlen);

/* Writes the concatenation of IOV into DIR/tmp, fsyncs it, links it into
 * DIR/new, removes the tmp name and fsyncs DIR/new. On success the base
 * name (with ,S=,W=) is copied to NAME (if not NULL). On failure nothing
 * is left in new/ and errno says why. */
int maildir_deliver(const char *dir, const char *host, const struct iovec *iov, int iovcnt,
                    char *name, size_t namelen);

/* Batch delivery (catchall_writer.c), so that a batch of copies costs
 * about two journal commits instead of two per copy: each copy's tmp file
 * is written and its writeback started (maildir_stage), then every staged
 * file is synced and closed (maildir_stage_sync: after the first, the
 * journal commit has covered most of the others), linked into new/
 * (maildir_stage_publish), and each new/ synced once (maildir_sync_new).
 * Only then is a copy on disk. maildir_stage_abort removes a staged copy
 * from tmp/ or new/, wherever it got to. */
struct maildir_staged {
    int fd;                     /* open until synced */
    bool published;             /* linked into new/ */
    char name[256];             /* base name, with ,S=,W= */
};
int maildir_stage(const char *dir, const char *host, const struct iovec *iov, int iovcnt,
                  struct maildir_staged *st);
int maildir_stage_sync(struct maildir_staged *st);
int maildir_stage_publish(const char *dir, struct maildir_staged *st);
void maildir_stage_abort(const char *dir, struct maildir_staged *st);
int maildir_sync_new(const char *dir);

/* Parses a file name of new/ or cur/. BASELEN gets the length of the part
 * before ":2," (the whole name when there is none); SIZE gets S= (0 if
 * absent); FLAGS the known flag letters. Returns false for dot files. */
bool maildir_parse_name(const char *name, size_t *baselen, uint64_t *size, unsigned *flags);

/* Writes BASE (BASELEN bytes) + ":2," + the letters of FLAGS, in ASCII
 * order, into OUT. Returns -1 if it does not fit. */
int maildir_name_with_flags(const char *base, size_t baselen, unsigned flags,
                            char *out, size_t outlen);

/* Bytes of the files in new/ and cur/ (by S=, else stat). Cached per
 * directory while neither directory's mtime changes. */
int maildir_usage(const char *dir, uint64_t *bytes);

/* Removes files in tmp/ older than 36 hours (left by a crash mid-write). */
void maildir_clean_tmp(const char *dir);

#endif
