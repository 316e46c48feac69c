/* A session's view of a catch-all Maildir; see mailbox.h. The sync with
 * the directory and dovecot-uidlist is in mbox_sync.c, the per-process
 * registries in mbox_registry.c. */
#include "mbox_private.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log.h"
#include "mbox_fs.h"

#define READ_CHUNK (256 * 1024)
#define HDR_CHUNK 8192

struct mailbox *mailbox_open(const char *dir, char *err, size_t errlen)
{
    struct mailbox *mb = calloc(1, sizeof *mb);
    if (!mb || !(mb->dir = strdup(dir))) {
        snprintf(err, errlen, "%s: %s", dir, strerror(ENOMEM));
        goto fail;
    }
    if (maildir_ensure(dir, err, errlen) < 0 || mbox_sync(mb, NULL, err, errlen) < 0)
        goto fail;
    return mb;
fail:
    mailbox_close(mb);
    return NULL;
}

void mailbox_close(struct mailbox *mb)
{
    if (!mb)
        return;
    for (size_t i = 0; i < mb->count; i++)
        free(mb->msgs[i].name);
    free(mb->msgs);
    free(mb->dir);
    free(mb);
}

uint32_t mailbox_uidvalidity(const struct mailbox *mb)
{
    return mb->uidvalidity;
}

uint32_t mailbox_uidnext(const struct mailbox *mb)
{
    return mb->uidnext;
}

size_t mailbox_count(const struct mailbox *mb)
{
    return mb->count;
}

const struct mbox_msg *mailbox_msg(const struct mailbox *mb, size_t i)
{
    return i < mb->count ? &mb->msgs[i] : NULL;
}

long mailbox_find_uid(const struct mailbox *mb, uint32_t uid)
{
    size_t lo = 0, hi = mb->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (mb->msgs[mid].uid == uid)
            return (long)mid;
        if (mb->msgs[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int mailbox_rescan(struct mailbox *mb, size_t *added)
{
    char err[512];
    size_t n = 0;
    int rc = mbox_sync(mb, &n, err, sizeof err);
    if (rc < 0)
        log_warn("mailbox rescan: %s", err);
    if (added)
        *added = n;
    return rc;
}

/* ---- following renames -------------------------------------------------- */

/* Another server (Dovecot, or another of our sessions) renamed message I
 * for a flag change: take its current name and the flags it carries. */
static int refresh_name(struct mailbox *mb, struct mbox_msg *m)
{
    size_t baselen;
    char *now;
    maildir_parse_name(m->name, &baselen, NULL, NULL);
    if (mbox_find_base(mb->dir, m->name, baselen, &now) < 0)
        return -1;
    free(m->name);
    m->name = now;
    maildir_parse_name(now, NULL, NULL, &m->flags);
    return 0;
}

static int msg_path(const struct mailbox *mb, const struct mbox_msg *m, char *out, size_t len)
{
    return mbox_path(out, len, mb->dir, "cur", m->name);
}

static int open_cur(const struct mailbox *mb, const struct mbox_msg *m)
{
    char path[PATH_MAX];
    if (msg_path(mb, m, path, sizeof path) < 0)
        return -1;
    return open(path, O_RDONLY | O_CLOEXEC);
}

int mailbox_open_msg(struct mailbox *mb, size_t i)
{
    if (i >= mb->count) {
        errno = EINVAL;
        return -1;
    }
    struct mbox_msg *m = &mb->msgs[i];
    int fd = open_cur(mb, m);
    if (fd >= 0 || errno != ENOENT)
        return fd;
    if (refresh_name(mb, m) < 0)
        return -1;          /* ENOENT: expunged by someone else */
    return open_cur(mb, m);
}

/* ---- reading ---------------------------------------------------------------- */

long mailbox_read(struct mailbox *mb, size_t i, uint64_t offset, uint64_t len,
                  struct evbuffer *out)
{
    int fd = mailbox_open_msg(mb, i);
    if (fd < 0)
        return -1;
    long total = 0;
    while (len > 0) {
        struct evbuffer_iovec v;
        size_t want = len < READ_CHUNK ? (size_t)len : READ_CHUNK;
        if (evbuffer_reserve_space(out, want, &v, 1) < 1)
            goto fail;
        ssize_t n = pread(fd, v.iov_base, want, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;      /* the end of the file clips LEN */
        v.iov_len = (size_t)n;
        if (evbuffer_commit_space(out, &v, 1) < 0)
            goto fail;
        total += n;
        offset += (uint64_t)n;
        len -= (uint64_t)n;
    }
    close(fd);
    return total;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* Offset just past the first CRLF CRLF. A message whose first line is
 * empty has an empty header: its block is that one CRLF. */
long mailbox_header_size(struct mailbox *mb, size_t i)
{
    char buf[HDR_CHUNK + 3];
    size_t keep = 0;        /* bytes carried over: "\r\n\r" may straddle reads */
    uint64_t base = 0;      /* file offset of buf[0] */
    long result = -1;

    int fd = mailbox_open_msg(mb, i);
    if (fd < 0)
        return -1;
    for (;;) {
        ssize_t n = pread(fd, buf + keep, HDR_CHUNK, (off_t)(base + keep));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        size_t avail = keep + (size_t)n;
        const char *p = memmem(buf, avail, "\r\n\r\n", 4);
        if (base == 0 && avail >= 2 && buf[0] == '\r' && buf[1] == '\n') {
            result = 2;
            break;
        }
        if (p || n == 0) {
            result = (long)(base + (p ? (uint64_t)(p - buf) + 4 : avail));
            break;
        }
        keep = avail < 3 ? avail : 3;
        memmove(buf, buf + avail - keep, keep);
        base += avail - keep;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}

/* ---- flags and expunge -------------------------------------------------------- */

/* BASE:2,<FLAGS> plus the lowercase letters (Dovecot keywords) of the
 * old name: they sort after the uppercase ones, so the order stays ASCII. */
static int flagged_name(const char *old, unsigned flags, char *out, size_t outlen)
{
    size_t baselen, len;
    maildir_parse_name(old, &baselen, NULL, NULL);
    if (maildir_name_with_flags(old, baselen, flags, out, outlen) < 0)
        return -1;
    len = strlen(out);
    if (strncmp(old + baselen, ":2,", 3) != 0)
        return 0;
    for (const char *p = old + baselen + 3; *p; p++) {
        if (*p < 'a' || *p > 'z')
            continue;
        if (len + 1 >= outlen)
            return -1;
        out[len++] = *p;
        out[len] = '\0';
    }
    return 0;
}

static int rename_flags(struct mailbox *mb, struct mbox_msg *m, unsigned flags)
{
    char from[PATH_MAX], to[PATH_MAX], name[NAME_MAX + 1];
    unsigned disk;

    maildir_parse_name(m->name, NULL, NULL, &disk);
    /* P has no IMAP flag, so no client can mean to change it */
    flags = (flags & (MF_SEEN | MF_ANSWERED | MF_FLAGGED | MF_DELETED | MF_DRAFT)) |
            (disk & MF_PASSED);
    if (flagged_name(m->name, flags, name, sizeof name) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (strcmp(name, m->name) != 0) {
        if (msg_path(mb, m, from, sizeof from) < 0 ||
            mbox_path(to, sizeof to, mb->dir, "cur", name) < 0 || rename(from, to) < 0)
            return -1;
        char *copy = strdup(name);
        if (!copy)
            return -1;      /* renamed: open_msg will find it by its base */
        free(m->name);
        m->name = copy;
    }
    m->flags = flags;
    return 0;
}

int mailbox_set_flags(struct mailbox *mb, size_t i, unsigned flags)
{
    if (i >= mb->count) {
        errno = EINVAL;
        return -1;
    }
    struct mbox_msg *m = &mb->msgs[i];
    if (rename_flags(mb, m, flags) == 0)
        return 0;
    if (errno != ENOENT || refresh_name(mb, m) < 0)
        return -1;
    return rename_flags(mb, m, flags);
}

static void drop_msg(struct mailbox *mb, size_t i)
{
    free(mb->msgs[i].name);
    memmove(&mb->msgs[i], &mb->msgs[i + 1], (mb->count - i - 1) * sizeof mb->msgs[0]);
    mb->count--;
}

static int unlink_cur(const struct mailbox *mb, const struct mbox_msg *m)
{
    char path[PATH_MAX];
    if (msg_path(mb, m, path, sizeof path) < 0)
        return -1;
    return unlink(path);
}

/* Unlinks under the current name, following one rename; a file that is
 * gone (expunged by another session or by Dovecot) counts as removed. */
static int remove_file(struct mailbox *mb, struct mbox_msg *m)
{
    if (unlink_cur(mb, m) == 0)
        return 0;
    if (errno != ENOENT)
        return -1;
    if (refresh_name(mb, m) < 0)
        return errno == ENOENT ? 0 : -1;
    return unlink_cur(mb, m) == 0 || errno == ENOENT ? 0 : -1;
}

int mailbox_expunge(struct mailbox *mb, size_t i)
{
    if (i >= mb->count) {
        errno = EINVAL;
        return -1;
    }
    if (remove_file(mb, &mb->msgs[i]) < 0)
        return -1;
    drop_msg(mb, i);
    return 0;
}
