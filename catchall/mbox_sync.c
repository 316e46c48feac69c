/* The sync of a mailbox view with its Maildir: new/ moves to cur/, every
 * file gets a UID from dovecot-uidlist (the one allocator shared with
 * Dovecot), and messages not yet in the view are appended.
 *
 * The uidlist is read without a lock. Only when a file has no UID (or
 * there is no uidlist) is the lock taken, the file re-read (Dovecot may
 * have assigned UIDs meanwhile) and a new version written. */
#include "mbox_private.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mbox_fs.h"
#include "uidlist.h"

struct sfile {
    char *name;             /* in cur/ */
    size_t baselen;
    uint32_t uid;           /* 0: none yet */
    bool recent;            /* moved from new/ by this sync */
    struct timespec mtime;  /* only for files that need a UID */
};

struct scan {
    const char *dir;
    struct sfile *f;
    size_t n, cap;
    int curfd;              /* move_new's target */
};

/* ---- listing ------------------------------------------------------------ */

static int scan_add(struct scan *s, const char *name, bool recent)
{
    size_t baselen;
    if (!maildir_parse_name(name, &baselen, NULL, NULL))
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct sfile *f = realloc(s->f, cap * sizeof *f);
        if (!f)
            return -1;
        s->f = f;
        s->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return -1;
    s->f[s->n++] = (struct sfile){ .name = copy, .baselen = baselen, .recent = recent };
    return 0;
}

static int list_cb(int dirfd, const char *name, void *arg)
{
    (void)dirfd;
    return scan_add(arg, name, false);
}

/* new/NAME -> cur/NAME:2, (a name that already has an info part keeps it). */
static int move_cb(int newfd, const char *name, void *arg)
{
    struct scan *s = arg;
    char to[NAME_MAX + 1];
    size_t baselen;

    if (!maildir_parse_name(name, &baselen, NULL, NULL))
        return 0;
    int n = name[baselen] ? snprintf(to, sizeof to, "%s", name)
                          : snprintf(to, sizeof to, "%s:2,", name);
    if (n < 0 || (size_t)n >= sizeof to)
        return 0;               /* cannot be named in cur/: leave it */
    if (renameat(newfd, name, s->curfd, to) < 0)
        return errno == ENOENT ? 0 : -1;    /* another reader moved it */
    return scan_add(s, to, true);
}

static int move_new(struct scan *s)
{
    char cur[PATH_MAX];
    if (mbox_path(cur, sizeof cur, s->dir, "cur", NULL) < 0)
        return -1;
    s->curfd = open(cur, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->curfd < 0)
        return -1;
    int rc = mbox_foreach(s->dir, "new", move_cb, s);
    int saved = errno;
    close(s->curfd);
    s->curfd = -1;
    errno = saved;
    return rc;
}

static int cmp_base(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

static int cmp_sfile(const void *a, const void *b)
{
    const struct sfile *x = a, *y = b;
    return cmp_base(x->name, x->baselen, y->name, y->baselen);
}

/* One entry per base: a file renamed while we read the directory can
 * show up under both names. */
static void sort_unique(struct scan *s)
{
    if (s->n == 0)
        return;     /* qsort's array may not be NULL */
    qsort(s->f, s->n, sizeof *s->f, cmp_sfile);
    size_t out = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (out > 0 && cmp_sfile(&s->f[out - 1], &s->f[i]) == 0) {
            s->f[out - 1].recent |= s->f[i].recent;
            free(s->f[i].name);
            continue;
        }
        s->f[out++] = s->f[i];
    }
    s->n = out;
}

static bool scan_has(const struct scan *s, const char *base)
{
    struct sfile key = { .name = (char *)base, .baselen = strlen(base) };
    return s->n > 0 && bsearch(&key, s->f, s->n, sizeof *s->f, cmp_sfile) != NULL;
}

static void scan_free(struct scan *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->f[i].name);
    free(s->f);
    s->f = NULL;
    s->n = s->cap = 0;
}

/* ---- UIDs ------------------------------------------------------------------- */

/* Sets each file's UID from UL; returns how many have none. */
static size_t match(struct scan *s, struct uidlist *ul)
{
    size_t missing = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct uidlist_rec *r = uidlist_find(ul, s->f[i].name, s->f[i].baselen);
        s->f[i].uid = r ? r->uid : 0;
        missing += r == NULL;
    }
    return missing;
}

/* Lines of files that are gone are dropped, as Dovecot does when it
 * rewrites the file. "Gone" is checked against a second listing of new/
 * and cur/ taken under the lock, so that a file renamed by another server
 * while we listed (and so seen under neither name) keeps its UID. */
struct keep_ctx {
    struct scan live;
    bool listed;
};

static int still_there(struct keep_ctx *k, const struct scan *s, const char *base)
{
    if (scan_has(s, base))
        return 1;
    if (!k->listed) {
        if (mbox_foreach(s->dir, "cur", list_cb, &k->live) < 0 ||
            mbox_foreach(s->dir, "new", list_cb, &k->live) < 0)
            return -1;
        sort_unique(&k->live);
        k->listed = true;
    }
    return scan_has(&k->live, base);
}

static int keep_lines(struct uidlist *out, struct uidlist *old, const struct scan *s)
{
    struct keep_ctx k = { .live = { .dir = s->dir, .curfd = -1 } };
    int rc = -1;
    for (size_t i = 0; i < old->count; i++) {
        const struct uidlist_rec *r = &old->recs[i];
        if (uidlist_find(old, r->base, strlen(r->base)) != r)
            continue;           /* an older line for the same file */
        int there = still_there(&k, s, r->base);
        if (there < 0 || (there && uidlist_add(out, r->uid, r->ext, r->base, strlen(r->base)) < 0))
            goto out;
    }
    rc = 0;
out:
    scan_free(&k.live);
    return rc;
}

static long name_usecs(const char *p)
{
    return p[0] == '.' && p[1] == 'M' ? strtol(p + 2, NULL, 10) : -1;
}

/* Names in Dovecot's order: the seconds and microseconds they start with
 * as numbers ("M99" is before "M100"), then as strings. */
static int cmp_names(const char *a, const char *b)
{
    char *ea, *eb;
    unsigned long long sa = strtoull(a, &ea, 10), sb = strtoull(b, &eb, 10);
    if (sa != sb)
        return sa < sb ? -1 : 1;
    long ua = name_usecs(ea), ub = name_usecs(eb);
    if (ua != ub)
        return ua < ub ? -1 : 1;
    return strcmp(a, b);
}

static int cmp_arrival(const void *a, const void *b)
{
    const struct sfile *x = *(struct sfile *const *)a, *y = *(struct sfile *const *)b;
    if (x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec)
        return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return cmp_names(x->name, y->name);
}

/* New UIDs in arrival order: by mtime, then name (mtimes tick coarsely). */
static int assign_new(struct uidlist *out, struct scan *s, size_t missing)
{
    struct sfile **todo = malloc((missing ? missing : 1) * sizeof *todo);
    char path[PATH_MAX];
    struct stat st;
    size_t n = 0;

    if (!todo)
        return -1;
    for (size_t i = 0; i < s->n; i++) {
        if (s->f[i].uid != 0)
            continue;
        bool ok = mbox_path(path, sizeof path, s->dir, "cur", s->f[i].name) == 0 &&
                  stat(path, &st) == 0;
        s->f[i].mtime = ok ? st.st_mtim : (struct timespec){ 0, 0 };
        todo[n++] = &s->f[i];
    }
    qsort(todo, n, sizeof *todo, cmp_arrival);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (out->nextuid >= UINT32_MAX - 1) {
            errno = EOVERFLOW;
            rc = -1;
            break;
        }
        todo[i]->uid = out->nextuid++;
        rc = uidlist_add(out, todo[i]->uid, NULL, todo[i]->name, todo[i]->baselen);
    }
    free(todo);
    return rc;
}

static int start_output(struct uidlist *out, const struct uidlist *old)
{
    memset(out, 0, sizeof *out);
    out->uidvalidity = old->uidvalidity;
    out->nextuid = old->nextuid;    /* never below its lines: uidlist_read */
    memcpy(out->guid, old->guid, sizeof out->guid);
    out->hdr_ext = old->hdr_ext ? strdup(old->hdr_ext) : NULL;
    return old->hdr_ext && !out->hdr_ext ? -1 : 0;
}

/* Under the lock: re-read, assign, write. OUT gets the list written. */
static int assign_locked(struct scan *s, struct uidlist *out, char *err, size_t errlen)
{
    struct uidlist old;
    const char *what = UIDLIST_LOCK_NAME;
    int fd = uidlist_lock(s->dir);
    if (fd < 0)
        goto fail;
    what = UIDLIST_NAME;
    int r = uidlist_read(s->dir, &old);
    if (r < 0) {
        uidlist_unlock(s->dir, fd);
        goto fail;
    }
    if (r == 0)
        uidlist_init(&old);
    size_t missing = match(s, &old);
    r = start_output(out, &old) == 0 && keep_lines(out, &old, s) == 0 &&
        assign_new(out, s, missing) == 0 ? 0 : -1;
    uidlist_free(&old);
    if (r < 0) {
        uidlist_unlock(s->dir, fd);
        goto fail;
    }
    if (uidlist_commit(s->dir, fd, out) == 0)
        return 0;
fail:
    snprintf(err, errlen, "%s/%s: %s", s->dir, what, strerror(errno));
    return -1;
}

/* ---- the view -------------------------------------------------------------- */

static int cmp_uid(const void *a, const void *b)
{
    const struct sfile *x = a, *y = b;
    return (x->uid > y->uid) - (x->uid < y->uid);
}

/* stat of cur/NAME, following a rename by another server. */
static int stat_msg(const char *dir, char **name, struct stat *st)
{
    char path[PATH_MAX];
    if (mbox_path(path, sizeof path, dir, "cur", *name) < 0)
        return -1;
    if (stat(path, st) == 0)
        return 0;
    if (errno != ENOENT)
        return -1;
    size_t baselen;
    char *now;
    maildir_parse_name(*name, &baselen, NULL, NULL);
    if (mbox_find_base(dir, *name, baselen, &now) < 0)
        return -1;
    free(*name);
    *name = now;
    return mbox_path(path, sizeof path, dir, "cur", *name) < 0 ? -1 : stat(path, st);
}

static int push_msg(struct mailbox *mb, struct sfile *f)
{
    struct stat st;
    if (stat_msg(mb->dir, &f->name, &st) < 0)
        return errno == ENOENT ? 0 : -1;    /* expunged meanwhile */
    if (mb->count == mb->cap) {
        size_t cap = mb->cap ? mb->cap * 2 : 64;
        struct mbox_msg *m = realloc(mb->msgs, cap * sizeof *m);
        if (!m)
            return -1;
        mb->msgs = m;
        mb->cap = cap;
    }
    unsigned flags = 0;
    maildir_parse_name(f->name, NULL, NULL, &flags);
    mb->msgs[mb->count++] = (struct mbox_msg){
        .uid = f->uid, .size = (uint64_t)st.st_size, .internaldate = st.st_mtime,
        .flags = flags, .recent = f->recent, .name = f->name,
    };
    f->name = NULL;     /* owned by the view now */
    return 0;
}

/* Appends files with UIDs above the view's last, in UID order. Others
 * (a UID Dovecot gave out below ours while we were not looking) cannot be
 * shown without breaking IMAP's ascending UIDs; a new session sees them. */
static int append_view(struct mailbox *mb, struct scan *s, size_t *added)
{
    uint32_t last = mb->count ? mb->msgs[mb->count - 1].uid : 0;
    size_t before = mb->count;
    if (s->n > 0)
        qsort(s->f, s->n, sizeof *s->f, cmp_uid);
    for (size_t i = 0; i < s->n; i++) {
        if (s->f[i].uid <= last)
            continue;
        if (push_msg(mb, &s->f[i]) < 0)
            return -1;
        last = s->f[i].uid;
    }
    if (added)
        *added = mb->count - before;
    return 0;
}

int mbox_sync(struct mailbox *mb, size_t *added, char *err, size_t errlen)
{
    struct scan s = { .dir = mb->dir, .curfd = -1 };
    struct uidlist ul;
    const char *what = "cur";
    int rc = -1;

    memset(&ul, 0, sizeof ul);
    if (mbox_foreach(mb->dir, "cur", list_cb, &s) < 0)
        goto fail;
    what = "new";
    if (move_new(&s) < 0)
        goto fail;
    sort_unique(&s);
    what = UIDLIST_NAME;
    int r = uidlist_read(mb->dir, &ul);
    if (r < 0)
        goto fail;
    if (r == 0 || match(&s, &ul) > 0) {
        uidlist_free(&ul);
        if (assign_locked(&s, &ul, err, errlen) < 0)
            goto out;
    }
    what = "cur";
    if (append_view(mb, &s, added) < 0)
        goto fail;
    mb->uidvalidity = ul.uidvalidity;
    mb->uidnext = ul.nextuid;
    if (mb->count && mb->uidnext <= mb->msgs[mb->count - 1].uid)
        mb->uidnext = mb->msgs[mb->count - 1].uid + 1;
    rc = 0;
    goto out;
fail:
    snprintf(err, errlen, "%s/%s: %s", mb->dir, what, strerror(errno));
out:
    scan_free(&s);
    uidlist_free(&ul);
    return rc;
}

/* ---- finding a renamed file ------------------------------------------------ */

struct find_ctx {
    const char *base;
    size_t baselen;
    char *found;
};

static int find_cb(int dirfd, const char *name, void *arg)
{
    struct find_ctx *c = arg;
    size_t baselen;
    (void)dirfd;
    if (!maildir_parse_name(name, &baselen, NULL, NULL) ||
        cmp_base(name, baselen, c->base, c->baselen) != 0)
        return 0;
    c->found = strdup(name);
    return c->found ? 1 : -1;
}

int mbox_find_base(const char *dir, const char *base, size_t baselen, char **name)
{
    struct find_ctx c = { .base = base, .baselen = baselen };
    int rc = mbox_foreach(dir, "cur", find_cb, &c);
    if (rc < 0)
        return -1;
    if (!c.found) {
        errno = ENOENT;
        return -1;
    }
    *name = c.found;
    return 0;
}
