/* Maildir names, flag suffixes and the atomic tmp -> new delivery.
 * maildir_usage lives in mbox_usage.c. */
#include "maildir.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "mbox_fs.h"

#define TMP_MAX_AGE (36 * 3600)     /* cr.yp.to/proto/maildir.html */
#define IOV_BATCH 64

/* The letters in ASCII order, the order the :2, suffix must have. */
static const struct {
    char letter;
    unsigned flag;
} flag_letters[] = {
    { 'D', MF_DRAFT }, { 'F', MF_FLAGGED }, { 'P', MF_PASSED },
    { 'R', MF_ANSWERED }, { 'S', MF_SEEN }, { 'T', MF_DELETED },
};

#define NLETTERS (sizeof flag_letters / sizeof flag_letters[0])

/* ---- maildir_ensure ------------------------------------------------- */

static int mkdir_one(const char *path)
{
    struct stat st;
    if (mkdir(path, 0700) == 0)
        return 0;
    if (errno != EEXIST)
        return -1;
    if (stat(path, &st) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Like mkdir -p: on first start the spool's catchall/ may not exist yet. */
static int mkdir_parents(char *path)
{
    for (char *p = strchr(path + 1, '/'); p; p = strchr(p + 1, '/')) {
        if (p[-1] == '/')
            continue;
        *p = '\0';
        int rc = mkdir_one(path);
        *p = '/';
        if (rc < 0)
            return -1;
    }
    return mkdir_one(path);
}

int maildir_ensure(const char *dir, char *err, size_t errlen)
{
    static const char *const subs[] = { "tmp", "new", "cur" };
    char path[PATH_MAX];

    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        goto fail;
    }
    if (mkdir_parents(path) < 0)
        goto fail;
    for (size_t i = 0; i < 3; i++) {
        if (mbox_path(path, sizeof path, dir, subs[i], NULL) < 0 || mkdir_one(path) < 0)
            goto fail;
    }
    return 0;
fail:
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
}

/* ---- names ------------------------------------------------------------ */

/* S= as Dovecot reads it: digits ended by ',', ':' or the end. */
static uint64_t size_field(const char *name, size_t baselen)
{
    const char *p = memmem(name, baselen, ",S=", 3);
    if (!p || p[3] < '0' || p[3] > '9')
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(p + 3, &end, 10);
    if (errno != 0 || (*end != ',' && *end != ':' && *end != '\0'))
        return 0;
    return v;
}

static unsigned letters_to_flags(const char *s)
{
    unsigned flags = 0;
    for (; *s; s++)
        for (size_t i = 0; i < NLETTERS; i++)
            if (*s == flag_letters[i].letter)
                flags |= flag_letters[i].flag;
    return flags;
}

/* The base ends at the first ':' (Dovecot's rule, so both servers match
 * the same uidlist line); only a "2," info carries flags. */
bool maildir_parse_name(const char *name, size_t *baselen, uint64_t *size, unsigned *flags)
{
    if (name[0] == '.' || name[0] == '\0')
        return false;
    size_t bl = strcspn(name, ":");
    if (baselen)
        *baselen = bl;
    if (size)
        *size = size_field(name, bl);
    if (flags)
        *flags = strncmp(name + bl, ":2,", 3) == 0 ? letters_to_flags(name + bl + 3) : 0;
    return true;
}

int maildir_name_with_flags(const char *base, size_t baselen, unsigned flags,
                            char *out, size_t outlen)
{
    char letters[NLETTERS + 1];
    size_t n = 0;
    for (size_t i = 0; i < NLETTERS; i++)
        if (flags & flag_letters[i].flag)
            letters[n++] = flag_letters[i].letter;
    letters[n] = '\0';
    if (baselen > INT_MAX)
        return -1;
    int len = snprintf(out, outlen, "%.*s:2,%s", (int)baselen, base, letters);
    return len < 0 || (size_t)len >= outlen ? -1 : 0;
}

/* ---- delivery --------------------------------------------------------- */

static atomic_uint deliver_seq;

/* '/' and ':' as the Maildir spec says; ',' too, or a host name could fake
 * a ",S=" field; and anything unprintable. */
static void encode_host(const char *host, char *out, size_t outlen)
{
    size_t o = 0;
    for (; *host && o + 5 < outlen; host++) {
        unsigned char c = (unsigned char)*host;
        if (c == '/' || c == ':' || c == ',' || c == '\\' || c <= ' ' || c >= 0x7f)
            o += (size_t)snprintf(out + o, outlen - o, "\\%03o", c);
        else
            out[o++] = (char)c;
    }
    out[o] = '\0';
}

/* <time>.M<usec>P<pid>Q<counter>.<host>,S=<n>,W=<n>: the sizes are equal
 * because files are stored with CRLF line ends. */
static int make_name(char *out, size_t outlen, const char *host, uint64_t size)
{
    char hostbuf[256], enc[NAME_MAX / 2];
    struct timeval tv;

    if (!host || !*host) {
        if (gethostname(hostbuf, sizeof hostbuf) < 0)
            snprintf(hostbuf, sizeof hostbuf, "localhost");
        hostbuf[sizeof hostbuf - 1] = '\0';
        host = hostbuf;
    }
    encode_host(host, enc, sizeof enc);
    gettimeofday(&tv, NULL);
    int n = snprintf(out, outlen, "%lld.M%ldP%ldQ%u.%s,S=%llu,W=%llu", (long long)tv.tv_sec,
                     (long)tv.tv_usec, (long)getpid(), atomic_fetch_add(&deliver_seq, 1) + 1, enc,
                     (unsigned long long)size, (unsigned long long)size);
    if (n < 0 || (size_t)n >= outlen) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* writev until everything is written (regular files may write short). */
static int write_all(int fd, const struct iovec *iov, int iovcnt)
{
    size_t off = 0;     /* bytes of iov[0] already written */
    while (iovcnt > 0) {
        struct iovec v[IOV_BATCH];
        int n = iovcnt < IOV_BATCH ? iovcnt : IOV_BATCH;
        memcpy(v, iov, (size_t)n * sizeof v[0]);
        v[0].iov_base = (char *)v[0].iov_base + off;
        v[0].iov_len -= off;
        ssize_t w = writev(fd, v, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        size_t done = off + (size_t)w;
        bool progress = w > 0;
        while (iovcnt > 0 && done >= iov[0].iov_len) {
            done -= iov[0].iov_len;
            progress = true;
            iov++;
            iovcnt--;
        }
        if (!progress) {
            errno = EIO;
            return -1;
        }
        off = done;
    }
    return 0;
}

static uint64_t iov_total(const struct iovec *iov, int iovcnt)
{
    uint64_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

/* Writes, fsyncs and closes TMP. */
static int write_tmp(const char *tmp, const struct iovec *iov, int iovcnt)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = write_all(fd, iov, iovcnt) == 0 && fsync(fd) == 0 ? 0 : -1;
    int saved = errno;
    if (close(fd) < 0 && rc == 0)
        return -1;
    errno = saved;
    return rc;
}

int maildir_deliver(const char *dir, const char *host, const struct iovec *iov, int iovcnt,
                    char *name, size_t namelen)
{
    char base[NAME_MAX + 1], tmp[PATH_MAX], dst[PATH_MAX];
    bool tmp_made = false, linked = false;
    int rc = -1;

    if (make_name(base, sizeof base, host, iov_total(iov, iovcnt)) < 0)
        return -1;
    if (name && strlen(base) >= namelen) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (mbox_path(tmp, sizeof tmp, dir, "tmp", base) < 0 ||
        mbox_path(dst, sizeof dst, dir, "new", base) < 0)
        return -1;

    tmp_made = true;
    if (write_tmp(tmp, iov, iovcnt) < 0) {
        tmp_made = errno != EEXIST;     /* never remove a file we did not create */
        goto out;
    }
    if (link(tmp, dst) < 0)
        goto out;
    linked = true;
    unlink(tmp);
    tmp_made = false;
    if (mbox_fsync_dir(dir, "new") < 0)
        goto out;
    rc = 0;
    if (name)
        memcpy(name, base, strlen(base) + 1);
out:;
    int saved = errno;
    if (tmp_made)
        unlink(tmp);
    if (rc < 0 && linked)
        unlink(dst);
    errno = saved;
    return rc;
}

/* ---- batch delivery ------------------------------------------------------ */

int maildir_stage(const char *dir, const char *host, const struct iovec *iov, int iovcnt,
                  struct maildir_staged *st)
{
    char tmp[PATH_MAX];
    st->fd = -1;
    st->published = false;
    if (make_name(st->name, sizeof st->name, host, iov_total(iov, iovcnt)) < 0
        || mbox_path(tmp, sizeof tmp, dir, "tmp", st->name) < 0)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    /* Writeback of every file of the batch starts now, so that the first
     * fsync's journal commit finds their blocks allocated and covers them. */
    if (write_all(fd, iov, iovcnt) < 0
        || sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) < 0) {
        int saved = errno;
        close(fd);
        unlink(tmp);
        errno = saved;
        return -1;
    }
    st->fd = fd;
    return 0;
}

int maildir_stage_sync(struct maildir_staged *st)
{
    int rc = fsync(st->fd);
    int saved = errno;
    if (close(st->fd) < 0 && rc == 0)
        rc = -1, saved = errno;
    st->fd = -1;
    errno = saved;
    return rc;
}

int maildir_stage_publish(const char *dir, struct maildir_staged *st)
{
    char tmp[PATH_MAX], dst[PATH_MAX];
    if (mbox_path(tmp, sizeof tmp, dir, "tmp", st->name) < 0
        || mbox_path(dst, sizeof dst, dir, "new", st->name) < 0 || link(tmp, dst) < 0)
        return -1;
    st->published = true;
    unlink(tmp);
    return 0;
}

void maildir_stage_abort(const char *dir, struct maildir_staged *st)
{
    char path[PATH_MAX];
    int saved = errno;
    if (st->fd >= 0)
        close(st->fd);
    st->fd = -1;
    if (mbox_path(path, sizeof path, dir, st->published ? "new" : "tmp", st->name) == 0)
        unlink(path);
    st->published = false;
    errno = saved;
}

int maildir_sync_new(const char *dir)
{
    return mbox_fsync_dir(dir, "new");
}

/* ---- tmp cleanup -------------------------------------------------------- */

static int clean_one(int dirfd, const char *name, void *arg)
{
    const time_t *cutoff = arg;
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
        st.st_mtime < *cutoff)
        unlinkat(dirfd, name, 0);
    return 0;
}

void maildir_clean_tmp(const char *dir)
{
    time_t cutoff = time(NULL) - TMP_MAX_AGE;
    (void)mbox_foreach(dir, "tmp", clean_one, &cutoff);
}
