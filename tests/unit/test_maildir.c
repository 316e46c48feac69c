/* Unit tests for the catch-all Maildir store: names and the :2, suffix,
 * the tmp -> new delivery (and that a failed one leaves nothing behind),
 * dovecot-uidlist as Dovecot writes it (ext fields, stale and duplicate
 * lines, an unfinished last line), UIDs that persist across opens, new
 * mail picked up by rescan, flag renames (ours and another server's),
 * expunge, reads, the stale dotlock, usage, tmp cleanup, and the
 * per-process lock and watch registries. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "mailbox.h"
#include "maildir.h"

/* ---- fixtures ------------------------------------------------------------ */

struct fix {
    char dir[64];       /* the Maildir */
};

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fix *f = calloc(1, sizeof *f);
    char err[256];
    strcpy(f->dir, "/tmp/test_maildir.XXXXXX");
    if (!mkdtemp(f->dir) || maildir_ensure(f->dir, err, sizeof err) < 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fix *f = *state;
    nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void pathf(char *out, size_t len, const char *dir, const char *sub, const char *name)
{
    int n = snprintf(out, len, "%s/%s%s%s", dir, sub, name ? "/" : "", name ? name : "");
    assert_true(n > 0 && (size_t)n < len);
}

/* Entries of DIR/SUB without dot files; NAMES (if not NULL) gets the first. */
static int count_files(const char *dir, const char *sub, char *first, size_t len)
{
    char path[512];
    pathf(path, sizeof path, dir, sub, NULL);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (n++ == 0 && first)
            snprintf(first, len, "%s", de->d_name);
    }
    closedir(d);
    return n;
}

static void write_file(const char *path, const char *data)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(data, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static void set_mtime(const char *path, time_t t)
{
    struct timespec ts[2] = { { t, 0 }, { t, 0 } };
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* Delivers TEXT; NAME gets the base name. */
static void deliver(const char *dir, const char *text, char *name, size_t len)
{
    struct iovec iov = { (void *)text, strlen(text) };
    assert_int_equal(maildir_deliver(dir, "mx2.example.test", &iov, 1, name, len), 0);
}

static struct mailbox *open_ok(const char *dir)
{
    char err[512] = "";
    struct mailbox *mb = mailbox_open(dir, err, sizeof err);
    if (!mb)
        fail_msg("mailbox_open(%s): %s", dir, err);
    return mb;
}

#define MSG1 "Subject: one\r\nX-Original-To: a@example.org\r\n\r\nbody one\r\n"
#define MSG2 "Subject: two\r\n\r\nbody two\r\n"
#define MSG3 "Subject: three\r\n\r\nbody three, a bit longer\r\n"

/* ---- names ------------------------------------------------------------------ */

static void test_parse_name(void **state)
{
    (void)state;
    size_t baselen;
    uint64_t size;
    unsigned flags;
    const char *n = "1700000000.M12P34Q5.mx2,S=1234,W=1260:2,FRS";

    assert_true(maildir_parse_name(n, &baselen, &size, &flags));
    assert_int_equal(baselen, strlen("1700000000.M12P34Q5.mx2,S=1234,W=1260"));
    assert_int_equal(size, 1234);
    assert_int_equal(flags, MF_FLAGGED | MF_ANSWERED | MF_SEEN);

    assert_true(maildir_parse_name("1.M2P3.host", &baselen, &size, &flags));
    assert_int_equal(baselen, strlen("1.M2P3.host"));
    assert_int_equal(size, 0);
    assert_int_equal(flags, 0);

    /* every letter, and an unknown one and a Dovecot keyword ignored */
    assert_true(maildir_parse_name("x,S=7:2,DFPRSTXa", NULL, &size, &flags));
    assert_int_equal(size, 7);
    assert_int_equal(flags, MF_DRAFT | MF_FLAGGED | MF_PASSED | MF_ANSWERED | MF_SEEN | MF_DELETED);

    /* a malformed S= is no size */
    assert_true(maildir_parse_name("x,S=12x,W=3", NULL, &size, NULL));
    assert_int_equal(size, 0);

    assert_false(maildir_parse_name(".hidden", NULL, NULL, NULL));
    assert_false(maildir_parse_name("", NULL, NULL, NULL));
}

static void test_flags_round_trip(void **state)
{
    (void)state;
    const char *base = "1700000000.M1P2Q3.h,S=10,W=10";
    char out[128];

    for (unsigned f = 0; f < 64; f++) {
        assert_int_equal(maildir_name_with_flags(base, strlen(base), f, out, sizeof out), 0);
        size_t baselen;
        unsigned back;
        assert_true(maildir_parse_name(out, &baselen, NULL, &back));
        assert_int_equal(baselen, strlen(base));
        assert_int_equal(back, f);
        /* the letters are in ASCII order */
        const char *info = out + baselen + 3;
        for (size_t i = 1; info[0] && info[i]; i++)
            assert_true(info[i - 1] < info[i]);
    }
    assert_int_equal(maildir_name_with_flags(base, 4, MF_SEEN | MF_DELETED | MF_DRAFT, out,
                                             sizeof out), 0);
    assert_string_equal(out, "1700:2,DST");
    assert_int_equal(maildir_name_with_flags(base, strlen(base), MF_SEEN, out, 10), -1);
}

/* ---- delivery --------------------------------------------------------------- */

static void test_deliver(void **state)
{
    struct fix *f = *state;
    const char *parts[] = { "Return-Path: <s@remote.test>\r\n", "X-Original-To: u@example.org\r\n",
                            "\r\n", "", "body\r\n" };
    struct iovec iov[5];
    size_t total = 0;
    for (int i = 0; i < 5; i++) {
        iov[i].iov_base = (void *)parts[i];
        iov[i].iov_len = strlen(parts[i]);
        total += iov[i].iov_len;
    }
    char name[256], listed[256], want[64], path[512];

    assert_int_equal(maildir_deliver(f->dir, "mx/2:x", iov, 5, name, sizeof name), 0);
    assert_int_equal(count_files(f->dir, "new", listed, sizeof listed), 1);
    assert_int_equal(count_files(f->dir, "tmp", NULL, 0), 0);
    assert_string_equal(name, listed);
    snprintf(want, sizeof want, ",S=%zu,W=%zu", total, total);
    assert_non_null(strstr(name, want));
    assert_non_null(strstr(name, ".mx\\0572\\072x,S="));
    assert_null(strchr(name, ':'));
    assert_null(strchr(name, '/'));

    pathf(path, sizeof path, f->dir, "new", name);
    char *data = read_file(path);
    assert_string_equal(data, "Return-Path: <s@remote.test>\r\nX-Original-To: u@example.org\r\n"
                              "\r\nbody\r\n");
    free(data);
    uint64_t size;
    assert_true(maildir_parse_name(name, NULL, &size, NULL));
    assert_int_equal(size, total);

    /* two deliveries in the same microsecond still get two names */
    char second[256];
    deliver(f->dir, MSG1, second, sizeof second);
    assert_string_not_equal(name, second);
    assert_int_equal(count_files(f->dir, "new", NULL, 0), 2);
}

static void test_deliver_failures(void **state)
{
    struct fix *f = *state;
    struct iovec iov = { (void *)MSG1, strlen(MSG1) };
    char name[256], path[512];

    /* NAME too small: refused before anything is written */
    errno = 0;
    assert_int_equal(maildir_deliver(f->dir, "h", &iov, 1, name, 8), -1);
    assert_int_equal(errno, ENAMETOOLONG);
    assert_int_equal(count_files(f->dir, "tmp", NULL, 0), 0);
    assert_int_equal(count_files(f->dir, "new", NULL, 0), 0);

    /* new/ missing: link fails, the tmp file is removed, errno kept */
    pathf(path, sizeof path, f->dir, "new", NULL);
    assert_int_equal(rmdir(path), 0);
    errno = 0;
    assert_int_equal(maildir_deliver(f->dir, "h", &iov, 1, name, sizeof name), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(count_files(f->dir, "tmp", NULL, 0), 0);

    /* new/ is a file: link fails with ENOTDIR, nothing left */
    write_file(path, "not a directory");
    errno = 0;
    assert_int_equal(maildir_deliver(f->dir, "h", &iov, 1, name, sizeof name), -1);
    assert_int_equal(errno, ENOTDIR);
    assert_int_equal(count_files(f->dir, "tmp", NULL, 0), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkdir(path, 0700), 0);

    /* tmp/ missing: nothing reaches new/ */
    pathf(path, sizeof path, f->dir, "tmp", NULL);
    assert_int_equal(rmdir(path), 0);
    errno = 0;
    assert_int_equal(maildir_deliver(f->dir, "h", &iov, 1, name, sizeof name), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(count_files(f->dir, "new", NULL, 0), 0);

    /* a read-only directory (only meaningful when not root) */
    assert_int_equal(mkdir(path, 0700), 0);
    if (geteuid() != 0) {
        pathf(path, sizeof path, f->dir, "new", NULL);
        assert_int_equal(chmod(path, 0500), 0);
        assert_int_equal(maildir_deliver(f->dir, "h", &iov, 1, name, sizeof name), -1);
        assert_int_equal(errno, EACCES);
        assert_int_equal(chmod(path, 0700), 0);
        assert_int_equal(count_files(f->dir, "new", NULL, 0), 0);
        assert_int_equal(count_files(f->dir, "tmp", NULL, 0), 0);
    }
}

static void test_ensure(void **state)
{
    struct fix *f = *state;
    char dir[512], path[512], err[512];
    struct stat st;

    snprintf(dir, sizeof dir, "%s/spool/catchall/box", f->dir);
    assert_int_equal(maildir_ensure(dir, err, sizeof err), 0);
    for (int i = 0; i < 3; i++) {
        pathf(path, sizeof path, dir, (const char *[]){ "tmp", "new", "cur" }[i], NULL);
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0700);
    }
    assert_int_equal(maildir_ensure(dir, err, sizeof err), 0);     /* idempotent */

    snprintf(path, sizeof path, "%s/plainfile", f->dir);
    write_file(path, "x");
    snprintf(dir, sizeof dir, "%s/plainfile/box", f->dir);
    assert_int_equal(maildir_ensure(dir, err, sizeof err), -1);
    assert_non_null(strstr(err, "plainfile"));
}

/* ---- uidlist and UIDs ----------------------------------------------------------- */

/* A uidlist as Dovecot 2.3 leaves it: ext fields, a line of an expunged
 * file, a name listed twice (the later line wins), a name with an info
 * part (old versions), and an unfinished last line (an append in
 * progress, ignored). */
static void test_dovecot_uidlist(void **state)
{
    struct fix *f = *state;
    char path[512];
    const char *cur[] = { "1699999990.M1P1.dv,S=10,W=10:2,S", "1699999991.M1P1.dv:2,",
                          "1699999992.M1P1.dv,S=20,W=20:2,RS", "1699999993.M1P1.dv:2,T" };
    for (int i = 0; i < 4; i++) {
        pathf(path, sizeof path, f->dir, "cur", cur[i]);
        write_file(path, MSG2);
    }
    pathf(path, sizeof path, f->dir, "dovecot-uidlist", NULL);
    write_file(path,
               "3 V1699999000 N12 G0123456789abcdef0123456789abcdef X7\n"
               "2 W1234 :1699999990.M1P1.dv,S=10,W=10\n"
               "3 G00112233445566778899aabbccddeeff W99 :1699999991.M1P1.dv\n"
               "4 :1699999999.M9P9.gone\n"
               "5 :1699999992.M1P1.dv,S=20,W=20:2,RS\n"
               "6 W1 :1699999993.M1P1.dv\n"
               "9 :1699999993.M1P1.dv\n"
               "bogus line\n"
               "11 :1699999994.M1P1.partial");

    struct mailbox *mb = open_ok(f->dir);
    assert_int_equal(mailbox_uidvalidity(mb), 1699999000);
    assert_int_equal(mailbox_uidnext(mb), 12);
    assert_int_equal(mailbox_count(mb), 4);
    const uint32_t uids[] = { 2, 3, 5, 9 };
    const unsigned flags[] = { MF_SEEN, 0, MF_ANSWERED | MF_SEEN, MF_DELETED };
    for (size_t i = 0; i < 4; i++) {
        const struct mbox_msg *m = mailbox_msg(mb, i);
        assert_int_equal(m->uid, uids[i]);
        assert_int_equal(m->flags, flags[i]);
        assert_false(m->recent);
        assert_string_equal(m->name, cur[i]);
        assert_int_equal(m->size, strlen(MSG2));
    }
    assert_int_equal(mailbox_find_uid(mb, 5), 2);
    assert_int_equal(mailbox_find_uid(mb, 4), -1);
    assert_null(mailbox_msg(mb, 4));

    /* nothing needed a UID: the file was left as Dovecot wrote it */
    char *before = read_file(path);
    assert_non_null(strstr(before, "4 :1699999999.M9P9.gone\n"));
    free(before);

    /* a new message: the rewrite keeps V, G, the unknown header field and
     * the ext fields, drops the stale and duplicate lines, and continues
     * at N */
    char name[256];
    deliver(f->dir, MSG1, name, sizeof name);
    size_t added = 99;
    assert_int_equal(mailbox_rescan(mb, &added), 0);
    assert_int_equal(added, 1);
    assert_int_equal(mailbox_msg(mb, 4)->uid, 12);
    assert_true(mailbox_msg(mb, 4)->recent);
    assert_int_equal(mailbox_uidnext(mb), 13);

    char want[1024];
    snprintf(want, sizeof want,
             "3 V1699999000 N13 G0123456789abcdef0123456789abcdef X7\n"
             "2 W1234 :1699999990.M1P1.dv,S=10,W=10\n"
             "3 G00112233445566778899aabbccddeeff W99 :1699999991.M1P1.dv\n"
             "5 :1699999992.M1P1.dv,S=20,W=20\n"
             "9 :1699999993.M1P1.dv\n"
             "12 :%s\n", name);
    char *after = read_file(path);
    assert_string_equal(after, want);
    free(after);
    pathf(path, sizeof path, f->dir, "dovecot-uidlist.lock", NULL);
    assert_int_equal(access(path, F_OK), -1);
    mailbox_close(mb);
}

/* Dovecot creates the file with its header (N1) and then appends the
 * lines, so N can lag behind them; UIDs of lines whose files are gone are
 * used all the same. */
static void test_uidlist_header_lags(void **state)
{
    struct fix *f = *state;
    char path[512], name[256];
    pathf(path, sizeof path, f->dir, "cur", "1699999990.M1P1.dv,S=10,W=10:2,");
    write_file(path, MSG2);
    pathf(path, sizeof path, f->dir, "dovecot-uidlist", NULL);
    write_file(path, "3 V1699999000 N1 G0123456789abcdef0123456789abcdef\n"
                     "1 :1699999990.M1P1.dv,S=10,W=10\n"
                     "2 :1699999991.M1P1.expunged\n");
    struct mailbox *mb = open_ok(f->dir);
    assert_int_equal(mailbox_count(mb), 1);
    assert_int_equal(mailbox_uidnext(mb), 3);
    deliver(f->dir, MSG1, name, sizeof name);
    size_t added;
    assert_int_equal(mailbox_rescan(mb, &added), 0);
    assert_int_equal(added, 1);
    assert_int_equal(mailbox_msg(mb, 1)->uid, 3);
    assert_int_equal(mailbox_uidnext(mb), 4);
    char *text = read_file(path);
    assert_int_equal(strncmp(text, "3 V1699999000 N4 G", 18), 0);
    free(text);
    mailbox_close(mb);
}

static void test_broken_uidlist(void **state)
{
    struct fix *f = *state;
    char path[512], err[512] = "";
    pathf(path, sizeof path, f->dir, "dovecot-uidlist", NULL);
    write_file(path, "1 1699999000 5\n1 name\n");
    assert_null(mailbox_open(f->dir, err, sizeof err));
    assert_non_null(strstr(err, "dovecot-uidlist"));
    write_file(path, "3 V0 N5\n");
    assert_null(mailbox_open(f->dir, err, sizeof err));
}

static void test_uids_persist(void **state)
{
    struct fix *f = *state;
    char names[3][256], path[512];
    struct stat st1, st2;

    deliver(f->dir, MSG1, names[0], sizeof names[0]);
    deliver(f->dir, MSG2, names[1], sizeof names[1]);
    deliver(f->dir, MSG3, names[2], sizeof names[2]);
    /* arrival order is mtime order, whatever the names say */
    for (int i = 0; i < 3; i++) {
        pathf(path, sizeof path, f->dir, "new", names[i]);
        set_mtime(path, 1700000000 + 10 * (3 - i));
    }

    time_t t0 = time(NULL);
    struct mailbox *mb = open_ok(f->dir);
    uint32_t v = mailbox_uidvalidity(mb);
    assert_true(v >= (uint32_t)t0 && v <= (uint32_t)time(NULL));
    assert_int_equal(mailbox_count(mb), 3);
    assert_int_equal(mailbox_uidnext(mb), 4);
    for (size_t i = 0; i < 3; i++) {
        const struct mbox_msg *m = mailbox_msg(mb, i);
        assert_int_equal(m->uid, i + 1);
        assert_true(m->recent);
        assert_int_equal(strncmp(m->name, names[2 - i], strlen(names[2 - i])), 0);
        assert_string_equal(m->name + strlen(names[2 - i]), ":2,");
        assert_int_equal(m->internaldate, 1700000000 + 10 * (i + 1));
    }
    assert_int_equal(mailbox_msg(mb, 0)->size, strlen(MSG3));
    assert_int_equal(count_files(f->dir, "new", NULL, 0), 0);
    assert_int_equal(count_files(f->dir, "cur", NULL, 0), 3);
    mailbox_close(mb);

    pathf(path, sizeof path, f->dir, "dovecot-uidlist", NULL);
    assert_int_equal(stat(path, &st1), 0);
    mb = open_ok(f->dir);
    assert_int_equal(mailbox_uidvalidity(mb), v);
    assert_int_equal(mailbox_count(mb), 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(mailbox_msg(mb, i)->uid, i + 1);
        assert_false(mailbox_msg(mb, i)->recent);
    }
    mailbox_close(mb);
    assert_int_equal(stat(path, &st2), 0);
    assert_int_equal(st1.st_ino, st2.st_ino);     /* not rewritten */

    /* an empty mailbox gets its uidlist (and UIDVALIDITY) at once */
    char dir2[512];
    snprintf(dir2, sizeof dir2, "%s/empty", f->dir);
    mb = open_ok(dir2);
    assert_int_equal(mailbox_count(mb), 0);
    assert_int_equal(mailbox_uidnext(mb), 1);
    v = mailbox_uidvalidity(mb);
    mailbox_close(mb);
    pathf(path, sizeof path, dir2, "dovecot-uidlist", NULL);
    char *text = read_file(path);
    char want[64];
    snprintf(want, sizeof want, "3 V%u N1 G", v);
    assert_int_equal(strncmp(text, want, strlen(want)), 0);
    assert_int_equal(strlen(text), strlen(want) + 32 + 1);
    free(text);
}

static void test_rescan(void **state)
{
    struct fix *f = *state;
    char name[256];
    size_t added = 99;

    deliver(f->dir, MSG1, name, sizeof name);
    struct mailbox *mb = open_ok(f->dir);
    assert_int_equal(mailbox_count(mb), 1);
    assert_int_equal(mailbox_rescan(mb, &added), 0);
    assert_int_equal(added, 0);

    deliver(f->dir, MSG2, name, sizeof name);
    deliver(f->dir, MSG3, name, sizeof name);
    assert_int_equal(mailbox_rescan(mb, &added), 0);
    assert_int_equal(added, 2);
    assert_int_equal(mailbox_count(mb), 3);
    assert_int_equal(mailbox_msg(mb, 1)->uid, 2);
    assert_int_equal(mailbox_msg(mb, 2)->uid, 3);
    assert_true(mailbox_msg(mb, 2)->recent);
    assert_int_equal(mailbox_uidnext(mb), 4);

    /* a second session sees the same UIDs, none of them recent to it */
    struct mailbox *other = open_ok(f->dir);
    assert_int_equal(mailbox_count(other), 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(mailbox_msg(other, i)->uid, i + 1);
        assert_false(mailbox_msg(other, i)->recent);
    }
    /* mail it picked up is appended to the first session's view too */
    deliver(f->dir, MSG1, name, sizeof name);
    assert_int_equal(mailbox_rescan(other, &added), 0);
    assert_int_equal(added, 1);
    assert_true(mailbox_msg(other, 3)->recent);
    assert_int_equal(mailbox_rescan(mb, &added), 0);
    assert_int_equal(added, 1);
    assert_int_equal(mailbox_msg(mb, 3)->uid, 4);
    assert_false(mailbox_msg(mb, 3)->recent);
    mailbox_close(other);
    mailbox_close(mb);
}

/* A stale lock (older than 120 s, or naming a dead process of this host)
 * is broken; a live one that never goes away makes the open fail. */
static void test_stale_lock(void **state)
{
    struct fix *f = *state;
    char lock[512], name[256], host[256], text[300];

    pathf(lock, sizeof lock, f->dir, "dovecot-uidlist.lock", NULL);
    write_file(lock, "");
    set_mtime(lock, time(NULL) - 200);
    deliver(f->dir, MSG1, name, sizeof name);
    struct mailbox *mb = open_ok(f->dir);
    assert_int_equal(mailbox_count(mb), 1);
    assert_int_equal(access(lock, F_OK), -1);

    /* pid 0x7ffffffe does not exist */
    assert_int_equal(gethostname(host, sizeof host), 0);
    snprintf(text, sizeof text, "%d:%s", 0x7ffffffe, host);
    write_file(lock, text);
    set_mtime(lock, time(NULL) - 5);
    deliver(f->dir, MSG2, name, sizeof name);
    size_t added;
    assert_int_equal(mailbox_rescan(mb, &added), 0);
    assert_int_equal(added, 1);
    assert_int_equal(access(lock, F_OK), -1);
    mailbox_close(mb);
}

/* ---- flags, expunge, reads ------------------------------------------------------- */

static void test_set_flags(void **state)
{
    struct fix *f = *state;
    char name[256], path[512], listed[256];

    deliver(f->dir, MSG1, name, sizeof name);
    struct mailbox *mb = open_ok(f->dir);
    assert_int_equal(mailbox_set_flags(mb, 0, MF_SEEN | MF_FLAGGED), 0);
    const struct mbox_msg *m = mailbox_msg(mb, 0);
    assert_int_equal(m->flags, MF_SEEN | MF_FLAGGED);
    char want[300];
    snprintf(want, sizeof want, "%s:2,FS", name);
    assert_string_equal(m->name, want);
    assert_int_equal(count_files(f->dir, "cur", listed, sizeof listed), 1);
    assert_string_equal(listed, want);

    /* another server renames it (adding P and a keyword): we follow */
    char from[512];
    pathf(from, sizeof from, f->dir, "cur", want);
    snprintf(want, sizeof want, "%s:2,PSa", name);
    pathf(path, sizeof path, f->dir, "cur", want);
    assert_int_equal(rename(from, path), 0);
    int fd = mailbox_open_msg(mb, 0);
    assert_true(fd >= 0);
    close(fd);
    assert_string_equal(m->name, want);
    assert_int_equal(m->flags, MF_SEEN | MF_PASSED);

    /* it renames it again (adding F) before our next change, which
     * clears \Seen: we follow, and P and the keyword survive */
    snprintf(want, sizeof want, "%s:2,FPSa", name);
    pathf(from, sizeof from, f->dir, "cur", want);
    assert_int_equal(rename(path, from), 0);
    assert_int_equal(mailbox_set_flags(mb, 0, MF_DELETED | MF_ANSWERED), 0);
    snprintf(want, sizeof want, "%s:2,PRTa", name);
    assert_string_equal(m->name, want);
    assert_int_equal(m->flags, MF_DELETED | MF_ANSWERED | MF_PASSED);
    assert_int_equal(count_files(f->dir, "cur", listed, sizeof listed), 1);
    assert_string_equal(listed, want);
    mailbox_close(mb);

    /* the flags are on disk: a new session sees them */
    mb = open_ok(f->dir);
    assert_int_equal(mailbox_msg(mb, 0)->flags, MF_DELETED | MF_ANSWERED | MF_PASSED);
    mailbox_close(mb);
}

static void test_expunge(void **state)
{
    struct fix *f = *state;
    char name[256], path[512];

    deliver(f->dir, MSG1, name, sizeof name);
    deliver(f->dir, MSG2, name, sizeof name);
    deliver(f->dir, MSG3, name, sizeof name);
    struct mailbox *mb = open_ok(f->dir);
    assert_int_equal(mailbox_count(mb), 3);

    assert_int_equal(mailbox_expunge(mb, 1), 0);
    assert_int_equal(mailbox_count(mb), 2);
    assert_int_equal(mailbox_msg(mb, 0)->uid, 1);
    assert_int_equal(mailbox_msg(mb, 1)->uid, 3);
    assert_int_equal(count_files(f->dir, "cur", NULL, 0), 2);
    assert_int_equal(mailbox_find_uid(mb, 2), -1);

    /* gone already (another session expunged it): still counts */
    pathf(path, sizeof path, f->dir, "cur", mailbox_msg(mb, 0)->name);
    assert_int_equal(unlink(path), 0);
    errno = 0;
    assert_int_equal(mailbox_open_msg(mb, 0), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(mailbox_expunge(mb, 0), 0);
    assert_int_equal(mailbox_count(mb), 1);
    assert_int_equal(mailbox_msg(mb, 0)->uid, 3);
    mailbox_close(mb);

    /* UIDs are never reused: the next message gets 4 */
    deliver(f->dir, MSG1, name, sizeof name);
    mb = open_ok(f->dir);
    assert_int_equal(mailbox_count(mb), 2);
    assert_int_equal(mailbox_msg(mb, 1)->uid, 4);
    mailbox_close(mb);
}

static void test_read(void **state)
{
    struct fix *f = *state;
    char name[256];
    struct evbuffer *out = evbuffer_new();

    deliver(f->dir, MSG1, name, sizeof name);
    deliver(f->dir, "no header block at all", name, sizeof name);
    deliver(f->dir, "\r\nbody without header\r\n", name, sizeof name);
    struct mailbox *mb = open_ok(f->dir);

    assert_int_equal(mailbox_header_size(mb, 0), strstr(MSG1, "\r\n\r\n") + 4 - MSG1);
    assert_int_equal(mailbox_header_size(mb, 1), strlen("no header block at all"));
    assert_int_equal(mailbox_header_size(mb, 2), 2);

    assert_int_equal(mailbox_read(mb, 0, 0, UINT64_MAX, out), strlen(MSG1));
    assert_int_equal(evbuffer_get_length(out), strlen(MSG1));
    assert_memory_equal(evbuffer_pullup(out, -1), MSG1, strlen(MSG1));
    evbuffer_drain(out, evbuffer_get_length(out));

    assert_int_equal(mailbox_read(mb, 0, 9, 3, out), 3);
    assert_memory_equal(evbuffer_pullup(out, -1), "one", 3);
    evbuffer_drain(out, 3);
    assert_int_equal(mailbox_read(mb, 0, strlen(MSG1) - 2, 100, out), 2);
    evbuffer_drain(out, 2);
    assert_int_equal(mailbox_read(mb, 0, strlen(MSG1) + 10, 100, out), 0);
    assert_int_equal(evbuffer_get_length(out), 0);

    evbuffer_free(out);
    mailbox_close(mb);
}

/* A header longer than one read, its blank line across a read boundary. */
static void test_long_header(void **state)
{
    struct fix *f = *state;
    size_t hlen = 8192 * 2 + 1;
    char *text = malloc(hlen + 64), name[256];
    memset(text, 'x', hlen);
    memcpy(text, "X-Long: ", 8);
    memcpy(text + hlen - 2, "\r\n\r\nbody\r\n", 11);
    deliver(f->dir, text, name, sizeof name);
    struct mailbox *mb = open_ok(f->dir);
    assert_int_equal(mailbox_header_size(mb, 0), hlen + 2);
    mailbox_close(mb);
    free(text);
}

/* ---- usage and tmp --------------------------------------------------------------- */

static void test_usage(void **state)
{
    struct fix *f = *state;
    char name[256], path[512];
    uint64_t bytes = 1;

    assert_int_equal(maildir_usage(f->dir, &bytes), 0);
    assert_int_equal(bytes, 0);
    deliver(f->dir, MSG1, name, sizeof name);
    deliver(f->dir, MSG2, name, sizeof name);
    assert_int_equal(maildir_usage(f->dir, &bytes), 0);
    assert_int_equal(bytes, strlen(MSG1) + strlen(MSG2));

    /* cur/ counts too, and a name without S= is stat'ed */
    pathf(path, sizeof path, f->dir, "cur", "1.M1P1.other:2,S");
    write_file(path, MSG3);
    assert_int_equal(maildir_usage(f->dir, &bytes), 0);
    assert_int_equal(bytes, strlen(MSG1) + strlen(MSG2) + strlen(MSG3));

    /* settled directories are cached, keyed on their mtimes */
    pathf(path, sizeof path, f->dir, "new", NULL);
    set_mtime(path, time(NULL) - 100);
    pathf(path, sizeof path, f->dir, "cur", NULL);
    set_mtime(path, time(NULL) - 100);
    assert_int_equal(maildir_usage(f->dir, &bytes), 0);
    assert_int_equal(maildir_usage(f->dir, &bytes), 0);
    assert_int_equal(bytes, strlen(MSG1) + strlen(MSG2) + strlen(MSG3));
    deliver(f->dir, MSG3, name, sizeof name);
    assert_int_equal(maildir_usage(f->dir, &bytes), 0);
    assert_int_equal(bytes, strlen(MSG1) + strlen(MSG2) + 2 * strlen(MSG3));
}

static void test_clean_tmp(void **state)
{
    struct fix *f = *state;
    char old[512], young[512];
    pathf(old, sizeof old, f->dir, "tmp", "1.M1P1.crashed");
    pathf(young, sizeof young, f->dir, "tmp", "2.M1P1.writing");
    write_file(old, "half");
    write_file(young, "half");
    set_mtime(old, time(NULL) - 37 * 3600);
    maildir_clean_tmp(f->dir);
    assert_int_equal(access(old, F_OK), -1);
    assert_int_equal(access(young, F_OK), 0);
}

/* ---- registries ------------------------------------------------------------------- */

static void test_lock_registry(void **state)
{
    (void)state;
    assert_true(mailbox_lock("box-a"));
    assert_false(mailbox_lock("box-a"));
    assert_true(mailbox_lock("box-b"));
    mailbox_unlock("box-a");
    assert_false(mailbox_lock("box-b"));
    assert_true(mailbox_lock("box-a"));
    mailbox_unlock("box-a");
    mailbox_unlock("box-b");
    mailbox_unlock("never-locked");
    assert_true(mailbox_lock("box-b"));
    mailbox_unlock("box-b");
}

struct watcher {
    int calls;
    struct mailbox_watch *self;
    struct mailbox_watch *other;    /* removed too, when set */
    bool remove_self;
};

static void on_notify(void *arg)
{
    struct watcher *w = arg;
    w->calls++;
    if (w->other) {
        mailbox_watch_remove(w->other);
        w->other = NULL;
    }
    if (w->remove_self) {
        mailbox_watch_remove(w->self);
        w->self = NULL;
        w->remove_self = false;
    }
}

static void test_watch_registry(void **state)
{
    (void)state;
    struct watcher a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    a.self = mailbox_watch_add("/m/one", on_notify, &a);
    b.self = mailbox_watch_add("/m/one", on_notify, &b);
    c.self = mailbox_watch_add("/m/two", on_notify, &c);
    assert_non_null(a.self);
    assert_non_null(b.self);

    mailbox_notify("/m/one");
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(c.calls, 0);

    /* A removes itself while being called: called once more, then never */
    a.remove_self = true;
    mailbox_notify("/m/one");
    assert_int_equal(a.calls, 2);
    assert_int_equal(b.calls, 2);
    mailbox_notify("/m/one");
    assert_int_equal(a.calls, 2);
    assert_int_equal(b.calls, 3);

    /* D removes B (listed after it) and itself: B is not called */
    d.self = mailbox_watch_add("/m/one", on_notify, &d);
    d.other = b.self;
    d.remove_self = true;
    mailbox_notify("/m/one");
    assert_int_equal(d.calls, 1);
    assert_int_equal(b.calls, 3);
    mailbox_notify("/m/one");
    assert_int_equal(d.calls, 1);
    assert_int_equal(b.calls, 3);

    mailbox_notify("/m/two");
    assert_int_equal(c.calls, 1);
    mailbox_watch_remove(c.self);
    mailbox_notify("/m/two");
    assert_int_equal(c.calls, 1);
    mailbox_notify("/m/nobody");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_name),
        cmocka_unit_test(test_flags_round_trip),
        cmocka_unit_test_setup_teardown(test_deliver, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deliver_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ensure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dovecot_uidlist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uidlist_header_lags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broken_uidlist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uids_persist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rescan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expunge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clean_tmp, setup, teardown),
        cmocka_unit_test(test_lock_registry),
        cmocka_unit_test(test_watch_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
