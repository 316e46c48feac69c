/* dovecot-uidlist v3 reader and writer, and its dotlock; see uidlist.h. */
#include "uidlist.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "mbox_fs.h"

/* Dovecot reads the PID in a lock only once the lock is this old. */
#define LOCK_PID_CHECK_SECS 2
#define LOCK_RETRY_NS (20 * 1000 * 1000)

/* ---- reading ------------------------------------------------------------ */

static uint32_t parse_u32(const char *s)
{
    char *end;
    if (*s < '0' || *s > '9')
        return 0;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v >= UINT32_MAX)
        return 0;
    return (uint32_t)v;
}

static bool is_guid(const char *s)
{
    return strlen(s) == 32 && strspn(s, "0123456789abcdefABCDEF") == 32;
}

/* Header fields we do not know are written back as they were. */
static int keep_hdr_field(struct uidlist *ul, const char *field)
{
    size_t old = ul->hdr_ext ? strlen(ul->hdr_ext) : 0;
    char *s = realloc(ul->hdr_ext, old + strlen(field) + 2);
    if (!s)
        return -1;
    if (old)
        s[old++] = ' ';
    strcpy(s + old, field);
    ul->hdr_ext = s;
    return 0;
}

/* "3 V<uidvalidity> N<nextuid> G<guid> ...": -1 (EBADMSG or ENOMEM). */
static int parse_header(struct uidlist *ul, char *line)
{
    char *save = NULL;
    if (strncmp(line, "3 ", 2) != 0)
        goto bad;
    for (char *f = strtok_r(line + 2, " ", &save); f; f = strtok_r(NULL, " ", &save)) {
        if (f[0] == 'V')
            ul->uidvalidity = parse_u32(f + 1);
        else if (f[0] == 'N')
            ul->nextuid = parse_u32(f + 1);
        else if (f[0] == 'G' && is_guid(f + 1))
            memcpy(ul->guid, f + 1, 33);
        else if (f[0] != 'G' && keep_hdr_field(ul, f) < 0)
            return -1;
    }
    if (ul->uidvalidity != 0 && ul->nextuid != 0)
        return 0;
bad:
    errno = EBADMSG;
    return -1;
}

/* "<uid> [<ext> ...] :<name>". Dovecot's ext fields never start with
 * ':', so the name starts at the first field that does. 1 for a malformed
 * line (skipped), -1 when out of memory. */
static int parse_rec(struct uidlist *ul, char *line)
{
    char *p;
    errno = 0;
    unsigned long uid = line[0] >= '1' && line[0] <= '9' ? strtoul(line, &p, 10) : 0;
    if (uid == 0 || errno != 0 || uid >= UINT32_MAX || *p != ' ')
        return 1;
    while (*p == ' ')
        p++;
    char *ext = p;
    while (*p && *p != ':') {
        p += strcspn(p, " ");
        p += strspn(p, " ");
    }
    if (*p != ':' || p[1] == '\0' || strchr(p, '/'))
        return 1;
    char *ext_end = p;
    while (ext_end > ext && ext_end[-1] == ' ')
        ext_end--;
    *ext_end = '\0';
    const char *name = p + 1;
    return uidlist_add(ul, (uint32_t)uid, *ext ? ext : NULL, name, strcspn(name, ":"));
}

static int read_lines(struct uidlist *ul, FILE *f, size_t *skipped)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = -1;

    errno = 0;
    n = getline(&line, &cap, f);
    if (n <= 0 || line[n - 1] != '\n') {
        errno = ferror(f) ? (errno ? errno : EIO) : EBADMSG;
        goto out;
    }
    line[n - 1] = '\0';
    if (parse_header(ul, line) < 0)
        goto out;
    while ((n = getline(&line, &cap, f)) > 0 && line[n - 1] == '\n') {
        line[n - 1] = '\0';
        int r = parse_rec(ul, line);
        if (r < 0)
            goto out;
        *skipped += (size_t)r;
    }
    /* Dovecot writes a new file's header before appending its lines, so
     * N may lag behind them (it makes the same correction) */
    for (size_t i = 0; i < ul->count; i++)
        if (ul->recs[i].uid >= ul->nextuid)
            ul->nextuid = ul->recs[i].uid + 1;
    if (ferror(f)) {
        errno = errno ? errno : EIO;
        goto out;
    }
    rc = 0;
out:
    free(line);
    return rc;
}

/* ---- building and lookups ---------------------------------------------- */

/* Dovecot's own GUIDs are not random either; any 128 bits will do, as
 * long as two mailboxes do not share them. */
static void make_guid(char out[33])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, GRND_NONBLOCK) != (ssize_t)sizeof b) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        unsigned long long a = (unsigned long long)ts.tv_sec ^ ((unsigned long long)getpid() << 32);
        unsigned long long c = (unsigned long long)ts.tv_nsec * 0x9E3779B97F4A7C15ull;
        memcpy(b, &a, 8);
        memcpy(b + 8, &c, 8);
    }
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

void uidlist_init(struct uidlist *ul)
{
    memset(ul, 0, sizeof *ul);
    ul->uidvalidity = (uint32_t)time(NULL);
    ul->nextuid = 1;
    make_guid(ul->guid);
}

int uidlist_add(struct uidlist *ul, uint32_t uid, const char *ext, const char *base,
                size_t baselen)
{
    if (ul->count == ul->cap) {
        size_t cap = ul->cap ? ul->cap * 2 : 64;
        struct uidlist_rec *r = realloc(ul->recs, cap * sizeof *r);
        if (!r)
            return -1;
        ul->recs = r;
        ul->cap = cap;
    }
    struct uidlist_rec *r = &ul->recs[ul->count];
    r->uid = uid;
    r->base = strndup(base, baselen);
    r->ext = ext ? strdup(ext) : NULL;
    if (!r->base || (ext && !r->ext)) {
        free(r->base);
        free(r->ext);
        return -1;
    }
    ul->count++;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    const struct uidlist_rec *x = *(struct uidlist_rec *const *)a;
    const struct uidlist_rec *y = *(struct uidlist_rec *const *)b;
    int c = strcmp(x->base, y->base);
    return c ? c : (x->uid > y->uid) - (x->uid < y->uid);
}

static int build_index(struct uidlist *ul)
{
    struct uidlist_rec **idx = realloc(ul->by_name, (ul->count ? ul->count : 1) * sizeof *idx);
    if (!idx)
        return -1;
    for (size_t i = 0; i < ul->count; i++)
        idx[i] = &ul->recs[i];
    qsort(idx, ul->count, sizeof *idx, cmp_name);
    ul->by_name = idx;
    ul->nindexed = ul->count;
    return 0;
}

int uidlist_read(const char *dir, struct uidlist *ul)
{
    char path[PATH_MAX];

    memset(ul, 0, sizeof *ul);
    if (mbox_path(path, sizeof path, dir, UIDLIST_NAME, NULL) < 0)
        return -1;
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : -1;
    /* the index is built here so that running out of memory is a read
     * error, never a file that looks unlisted and gets a new UID */
    size_t skipped = 0;
    int rc = read_lines(ul, f, &skipped) == 0 && build_index(ul) == 0 ? 0 : -1;
    int saved = errno;
    fclose(f);
    if (skipped)    /* their files get new UIDs at the next write */
        log_warn("%s: %zu malformed lines ignored", path, skipped);
    if (rc < 0) {
        uidlist_free(ul);
        errno = saved;
        return -1;
    }
    return 1;
}

/* strncmp is not enough: "a" must sort before "ab". */
static int cmp_base(const char *base, size_t len, const char *name)
{
    int c = strncmp(base, name, len);
    return c ? c : -(name[len] != '\0');
}

const struct uidlist_rec *uidlist_find(struct uidlist *ul, const char *base, size_t baselen)
{
    if (ul->nindexed != ul->count && build_index(ul) < 0)
        return NULL;
    size_t lo = 0, hi = ul->nindexed;
    while (lo < hi) {           /* the last entry not above BASE */
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_base(base, baselen, ul->by_name[mid]->base) >= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    const struct uidlist_rec *r = ul->by_name[lo - 1];
    return cmp_base(base, baselen, r->base) == 0 ? r : NULL;
}

void uidlist_free(struct uidlist *ul)
{
    for (size_t i = 0; i < ul->count; i++) {
        free(ul->recs[i].base);
        free(ul->recs[i].ext);
    }
    free(ul->recs);
    free(ul->by_name);
    free(ul->hdr_ext);
    memset(ul, 0, sizeof *ul);
}

/* ---- the dotlock ---------------------------------------------------------- */

/* A lock that names a dead process of this host is stale at once (Dovecot
 * writes "pid:host" into its locks and checks them the same way). */
static bool holder_dead(const char *path)
{
    char buf[512], host[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    char *colon = strchr(buf, ':'), *end;
    if (!colon || gethostname(host, sizeof host) < 0)
        return false;
    *colon = '\0';
    colon[strcspn(colon + 1, "\n") + 1] = '\0';
    long pid = strtol(buf, &end, 10);
    if (*end != '\0' || pid <= 0 || strcmp(colon + 1, host) != 0)
        return false;
    return pid == (long)getpid() || (kill((pid_t)pid, 0) < 0 && errno == ESRCH);
}

/* True if the lock at PATH is gone or was removed as stale. */
static bool break_stale(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return errno == ENOENT;
    time_t now = time(NULL);
    bool stale = st.st_mtime < now - UIDLIST_LOCK_STALE ||
                 (st.st_mtime < now - LOCK_PID_CHECK_SECS && holder_dead(path));
    return stale && (unlink(path) == 0 || errno == ENOENT);
}

static long elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
}

static void write_pid(int fd)
{
    char host[256], buf[300];
    if (gethostname(host, sizeof host) < 0)
        return;
    host[sizeof host - 1] = '\0';
    int n = snprintf(buf, sizeof buf, "%ld:%s", (long)getpid(), host);
    if (n > 0 && (size_t)n < sizeof buf && write(fd, buf, (size_t)n) < 0)
        return;     /* an empty lock only loses the quick stale check */
}

int uidlist_lock(const char *dir)
{
    char path[PATH_MAX];
    struct timespec start;

    if (mbox_path(path, sizeof path, dir, UIDLIST_LOCK_NAME, NULL) < 0)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            write_pid(fd);
            return fd;
        }
        if (errno != EEXIST)
            return -1;
        if (elapsed_ms(&start) >= UIDLIST_LOCK_WAIT_MS) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (!break_stale(path))
            nanosleep(&(struct timespec){ 0, LOCK_RETRY_NS }, NULL);
    }
}

void uidlist_unlock(const char *dir, int lockfd)
{
    char path[PATH_MAX];
    int saved = errno;
    if (mbox_path(path, sizeof path, dir, UIDLIST_LOCK_NAME, NULL) == 0)
        unlink(path);
    close(lockfd);
    errno = saved;
}

/* ---- writing --------------------------------------------------------------- */

static int cmp_uid(const void *a, const void *b)
{
    const struct uidlist_rec *x = a, *y = b;
    return (x->uid > y->uid) - (x->uid < y->uid);
}

static void write_all_recs(FILE *f, struct uidlist *ul)
{
    if (!ul->guid[0])
        make_guid(ul->guid);
    if (ul->count > 0)
        qsort(ul->recs, ul->count, sizeof *ul->recs, cmp_uid);
    ul->nindexed = 0;       /* the order changed: rebuild on next lookup */
    if (ul->count && ul->nextuid <= ul->recs[ul->count - 1].uid)
        ul->nextuid = ul->recs[ul->count - 1].uid + 1;
    fprintf(f, "3 V%u N%u G%s%s%s\n", ul->uidvalidity, ul->nextuid, ul->guid,
            ul->hdr_ext ? " " : "", ul->hdr_ext ? ul->hdr_ext : "");
    for (size_t i = 0; i < ul->count; i++) {
        const struct uidlist_rec *r = &ul->recs[i];
        fprintf(f, "%u%s%s :%s\n", r->uid, r->ext ? " " : "", r->ext ? r->ext : "", r->base);
    }
}

int uidlist_commit(const char *dir, int lockfd, struct uidlist *ul)
{
    char lock[PATH_MAX], path[PATH_MAX];

    if (mbox_path(lock, sizeof lock, dir, UIDLIST_LOCK_NAME, NULL) < 0 ||
        mbox_path(path, sizeof path, dir, UIDLIST_NAME, NULL) < 0 ||
        ftruncate(lockfd, 0) < 0 || lseek(lockfd, 0, SEEK_SET) < 0) {
        uidlist_unlock(dir, lockfd);
        return -1;
    }
    FILE *f = fdopen(lockfd, "w");
    if (!f) {
        uidlist_unlock(dir, lockfd);
        return -1;
    }
    write_all_recs(f, ul);
    int rc = fflush(f) == 0 && !ferror(f) && fsync(lockfd) == 0 && rename(lock, path) == 0 ? 0 : -1;
    int saved = errno;
    if (rc < 0)
        unlink(lock);
    fclose(f);
    if (rc == 0)
        (void)mbox_fsync_dir(dir, NULL);    /* best effort: the file is already live */
    errno = saved;
    return rc;
}
