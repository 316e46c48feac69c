/* POP3 TRANSACTION and UPDATE states (RFC 1939 5, 6, 7): the listings,
 * RETR/TOP streamed from the file in chunks as the output drains, DELE
 * marks, and the removal of the marked messages after QUIT.
 *
 * The session's message numbers are fixed at login (no rescan: RFC 1939
 * numbers must not change during a session), so index I of the mailbox
 * view is message I + 1 until UPDATE. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "mailbox.h"
#include "pop3_parse.h"
#include "pop3_private.h"

#define READ_CHUNK 65536

/* ---- message numbers ------------------------------------------------------ */

static bool no_argument(const char *args)
{
    return args[strspn(args, " ")] == '\0';
}

/* Message N (1-based) as an index, or false after answering. */
static bool msg_index(struct pop3_session *s, unsigned long n, size_t *i)
{
    if (n > s->count) {
        pop3_reply(s, "-ERR There's no message %lu.", n);
        return false;
    }
    if (s->deleted[n - 1]) {
        pop3_reply(s, "-ERR Message is deleted.");
        return false;
    }
    *i = n - 1;
    return true;
}

static bool msg_arg(struct pop3_session *s, const char *args, size_t *i)
{
    unsigned long n;
    if (!pop3_parse_msgno(args, &n)) {
        pop3_bad(s, "-ERR Invalid message number.");
        return false;
    }
    return msg_index(s, n, i);
}

static const struct mbox_msg *msg(const struct pop3_session *s, size_t i)
{
    return mailbox_msg(s->mb, i);
}

/* Messages not marked deleted, and their size. */
static size_t totals(const struct pop3_session *s, uint64_t *bytes)
{
    size_t n = 0;
    *bytes = 0;
    for (size_t i = 0; i < s->count; i++) {
        if (s->deleted[i])
            continue;
        n++;
        *bytes += msg(s, i)->size;
    }
    return n;
}

/* ---- listings ----------------------------------------------------------------- */

void pop3_cmd_stat(struct pop3_session *s, const char *args)
{
    (void)args;
    uint64_t bytes;
    size_t n = totals(s, &bytes);
    pop3_reply(s, "+OK %zu %" PRIu64, n, bytes);
}

void pop3_cmd_list(struct pop3_session *s, const char *args)
{
    size_t i;
    if (!no_argument(args)) {
        if (msg_arg(s, args, &i))
            pop3_reply(s, "+OK %zu %" PRIu64, i + 1, msg(s, i)->size);
        return;
    }
    uint64_t bytes;
    size_t n = totals(s, &bytes);
    pop3_reply(s, "+OK %zu messages (%" PRIu64 " octets)", n, bytes);
    for (i = 0; i < s->count; i++)
        if (!s->deleted[i])
            pop3_reply(s, "%zu %" PRIu64, i + 1, msg(s, i)->size);
    pop3_reply(s, ".");
}

/* Dovecot's default pop3_uidl_format %08Xu%08Xv, which Dovecot prints in
 * lower-case hex (000000016b0b3053): a puller moved between
 * Dovecot and us on the same Maildir downloads nothing twice. */
static void uidl_line(struct pop3_session *s, const char *prefix, size_t i)
{
    pop3_reply(s, "%s%zu %08x%08x", prefix, i + 1, (unsigned)msg(s, i)->uid,
               (unsigned)mailbox_uidvalidity(s->mb));
}

void pop3_cmd_uidl(struct pop3_session *s, const char *args)
{
    size_t i;
    if (!no_argument(args)) {
        if (msg_arg(s, args, &i))
            uidl_line(s, "+OK ", i);
        return;
    }
    pop3_reply(s, "+OK");
    for (i = 0; i < s->count; i++)
        if (!s->deleted[i])
            uidl_line(s, "", i);
    pop3_reply(s, ".");
}

/* ---- RETR and TOP ----------------------------------------------------------- */

static void xfer_close(struct pop3_xfer *x)
{
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
}

/* The body is complete in the output: terminate it and read commands again. */
static void xfer_done(struct pop3_session *s)
{
    struct pop3_xfer *x = &s->xfer;
    const struct mbox_msg *m = msg(s, x->idx);
    pop3_stuffer_finish(&x->st, mconn_output(s->c));
    xfer_close(x);
    pop3_enter(s, P_TRANS);
    /* What a puller took, counted for the logout line: a TOP whose cut
     * fell at or past the end sent the whole message too (fetchmail
     * retrieves with TOP n 99999999). */
    bool whole = !x->st.done || x->used >= m->size;
    if (whole)
        s->retrieved++;
    if (!x->top)
        log_info("pop3: retr: mailbox=%s, uid=%" PRIu32 ", size=%" PRIu64 ", client=%s",
                 s->mbname, m->uid, m->size, mconn_ip(s->c));
    else
        log_info("pop3: top: mailbox=%s, uid=%" PRIu32 ", lines=%" PRIu64 ", whole=%s, client=%s",
                 s->mbname, m->uid, x->lines, whole ? "yes" : "no", mconn_ip(s->c));
}

/* A read error half-way: the "+OK" is out, so the only honest end is to
 * drop the connection. Without the final "." no client takes the partial
 * body for the message (nor DELEs it). */
static void xfer_failed(struct pop3_session *s, int err)
{
    struct pop3_xfer *x = &s->xfer;
    log_warn("pop3: read error: mailbox=%s, uid=%" PRIu32 ", client=%s: %s", s->mbname,
             msg(s, x->idx)->uid, mconn_ip(s->c), strerror(err));
    xfer_close(x);
    pop3_close(s);
}

bool pop3_stream(struct pop3_session *s)
{
    struct pop3_xfer *x = &s->xfer;
    struct evbuffer *out = mconn_output(s->c);
    char buf[READ_CHUNK];
    while (mconn_pending(s->c) < POP3_OUT_HIGH_WATER) {
        ssize_t n = read(x->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            xfer_failed(s, errno);
            return false;
        }
        if (n == 0) {
            xfer_done(s);
            return true;
        }
        x->used += pop3_stuffer_feed(&x->st, buf, (size_t)n, out);
        if (x->st.done) {
            xfer_done(s);
            return true;
        }
    }
    return false;
}

static void xfer_start(struct pop3_session *s, size_t i, bool top, uint64_t lines)
{
    struct pop3_xfer *x = &s->xfer;
    int fd = mailbox_open_msg(s->mb, i);
    if (fd < 0 && errno == ENOENT) {
        /* removed behind our back (by Dovecot serving the same Maildir) */
        pop3_reply(s, "-ERR Message was removed by another session.");
        return;
    }
    if (fd < 0) {
        log_warn("pop3: cannot open message: mailbox=%s, uid=%" PRIu32 ", client=%s: %s",
                 s->mbname, msg(s, i)->uid, mconn_ip(s->c), strerror(errno));
        pop3_reply(s, "-ERR [SYS/TEMP] Cannot read the message, wait and retry.");
        return;
    }
    *x = (struct pop3_xfer){ .fd = fd, .idx = i, .top = top, .lines = lines };
    if (top) {
        pop3_stuffer_init_top(&x->st, lines);
        pop3_reply(s, "+OK");
    } else {
        pop3_stuffer_init(&x->st);
        pop3_reply(s, "+OK %" PRIu64 " octets", msg(s, i)->size);
    }
    pop3_enter(s, P_STREAM);
    pop3_stream(s);
}

void pop3_cmd_retr(struct pop3_session *s, const char *args)
{
    size_t i;
    if (msg_arg(s, args, &i))
        xfer_start(s, i, false, 0);
}

void pop3_cmd_top(struct pop3_session *s, const char *args)
{
    unsigned long n;
    uint64_t lines;
    size_t i;
    if (!pop3_parse_top(args, &n, &lines)) {
        pop3_bad(s, "-ERR Syntax: TOP message lines");
        return;
    }
    if (msg_index(s, n, &i))
        xfer_start(s, i, true, lines);
}

/* ---- DELE, RSET --------------------------------------------------------------- */

void pop3_cmd_dele(struct pop3_session *s, const char *args)
{
    size_t i;
    if (!msg_arg(s, args, &i))
        return;
    s->deleted[i] = true;
    pop3_reply(s, "+OK Marked to be deleted.");
}

void pop3_cmd_rset(struct pop3_session *s, const char *args)
{
    (void)args;
    memset(s->deleted, 0, s->count * sizeof *s->deleted);
    uint64_t bytes;
    size_t n = totals(s, &bytes);
    pop3_reply(s, "+OK maildrop has %zu messages (%" PRIu64 " octets)", n, bytes);
}

/* ---- UPDATE and the end of a session --------------------------------------- */

/* Removes the marked messages, highest index first: an expunge moves the
 * later messages of the view down by one. Returns how many failed. */
static unsigned expunge_marked(struct pop3_session *s, unsigned *removed)
{
    unsigned failed = 0;
    *removed = 0;
    for (size_t i = s->count; i-- > 0;) {
        if (!s->deleted[i])
            continue;
        uint32_t uid = msg(s, i)->uid;
        if (mailbox_expunge(s->mb, i) != 0) {
            log_warn("pop3: cannot delete: mailbox=%s, uid=%" PRIu32 ", client=%s: %s",
                     s->mbname, uid, mconn_ip(s->c), strerror(errno));
            failed++;
            continue;
        }
        (*removed)++;
        log_info("pop3: dele: mailbox=%s, uid=%" PRIu32 ", client=%s", s->mbname, uid,
                 mconn_ip(s->c));
    }
    return failed;
}

void pop3_update(struct pop3_session *s)
{
    pop3_enter(s, P_UPDATE);
    unsigned removed;
    unsigned failed = expunge_marked(s, &removed);
    log_info("pop3: logout: mailbox=%s, client=%s, retrieved=%u, deleted=%u, kept=%zu",
             s->mbname, mconn_ip(s->c), s->retrieved, removed, s->count - removed);
    pop3_release(s);
    if (failed > 0)
        pop3_reply(s, "-ERR [SYS/TEMP] Some deleted messages were not removed.");
    else
        pop3_reply(s, "+OK Logging out.");
    pop3_close(s);
}

void pop3_lost(struct pop3_session *s)
{
    size_t marked = 0;
    for (size_t i = 0; i < s->count; i++)
        marked += s->deleted[i];
    log_info("pop3: logout without QUIT: mailbox=%s, client=%s, retrieved=%u, deleted=0, "
             "kept=%zu, marked=%zu (not deleted)",
             s->mbname, mconn_ip(s->c), s->retrieved, s->count, marked);
}

void pop3_release(struct pop3_session *s)
{
    xfer_close(&s->xfer);
    if (s->mb != NULL)
        mailbox_close(s->mb);
    s->mb = NULL;
    free(s->deleted);
    s->deleted = NULL;
    s->count = 0;
    if (s->mbname != NULL)
        mailbox_unlock(s->mbname);
    free(s->mbname);
    s->mbname = NULL;
}
