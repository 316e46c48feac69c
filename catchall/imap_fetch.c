/* FETCH and UID FETCH (RFC 3501 6.4.5, 7.4.2).
 *
 * The answer for one message is always one "* n FETCH (...)" response,
 * literals included (fdm needs "BODY[] {" in its first line). It is built
 * item by item into the output; a body literal larger than a chunk is
 * copied from the file as the output drains, so a 50 MB message never
 * sits in memory. The job keeps the parser's arena (the HEADER.FIELDS
 * names live there) until the last message is out. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "imap_envelope.h"
#include "imap_private.h"
#include "log.h"

#define CHUNK (64 * 1024)            /* file bytes added to the output at a time */

struct imap_fetch_job {
    struct imap_parser ps;           /* owns the arena of req */
    struct imap_fetch_req req;
    bool uid;
    size_t *idx, n, pos;             /* the messages, and the next one */
    unsigned gone, unsupported, errors;

    /* the message in progress */
    bool in_msg;
    size_t att;                      /* next item of req */
    bool first;                      /* no item written yet */
    int fd;
    uint64_t fsize;
    char *hdr;                       /* up to IMAP_HEADER_PARSE_MAX of the header */
    size_t hdrlen;
    uint64_t hsize;                  /* the whole header, blank line included */
    bool have_hdr;
    bool seen_set, flags_sent;
    uint64_t body_bytes;             /* literal bytes, for the log */
    uint64_t stream_off, stream_left; /* a literal still being copied */
};

/* ---- what the items need ---------------------------------------------- */

static bool is_body_item(const struct imap_fetch_att *a)
{
    return a->kind == FA_SECTION || a->kind == FA_RFC822 || a->kind == FA_RFC822_HEADER
        || a->kind == FA_RFC822_TEXT;
}

static bool needs_file(const struct imap_fetch_att *a)
{
    return is_body_item(a) || a->kind == FA_ENVELOPE || a->kind == FA_BODY
        || a->kind == FA_BODYSTRUCTURE;
}

/* RFC 3501 6.4.5: BODY[...] (not BODY.PEEK), RFC822 and RFC822.TEXT set
 * \Seen; RFC822.HEADER does not. */
static bool sets_seen(const struct imap_fetch_att *a)
{
    return (a->kind == FA_SECTION && !a->peek) || a->kind == FA_RFC822
        || a->kind == FA_RFC822_TEXT;
}

static bool req_any(const struct imap_fetch_req *r, bool (*pred)(const struct imap_fetch_att *))
{
    for (size_t i = 0; i < r->n; i++)
        if (pred(&r->att[i]))
            return true;
    return false;
}

/* Items that need the header read (and its size known). */
static bool needs_header(const struct imap_fetch_att *a)
{
    if (a->kind == FA_SECTION)
        return a->sec != SEC_ALL || a->nparts > 0;
    return needs_file(a) && a->kind != FA_RFC822;
}

static bool is_structure(const struct imap_fetch_att *a)
{
    return a->kind == FA_BODY || a->kind == FA_BODYSTRUCTURE;
}

static bool is_uid(const struct imap_fetch_att *a)
{
    return a->kind == FA_UID;
}

/* ---- reading the message ---------------------------------------------- */

int imap_read_header(int fd, size_t max, char **hdr, size_t *len, uint64_t *hsize)
{
    char *buf = NULL;
    size_t have = 0, cap = 0;
    char chunk[8192];
    uint64_t off = 0;
    int st = 1;                      /* 0: in a line, 1: at a line start, 2: CR at a line start */
    for (;;) {
        ssize_t r = pread(fd, chunk, sizeof chunk, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            return -1;
        }
        if (r == 0)
            break;                   /* no blank line: all of it is header */
        size_t end = (size_t)r;
        bool found = false;
        for (size_t i = 0; i < (size_t)r && !found; i++) {
            char c = chunk[i];
            if (st == 2 && c != '\n')
                st = 0;
            if (c == '\n') {
                found = st != 0;
                st = 1;
                end = i + 1;
            } else if (c == '\r' && st == 1) {
                st = 2;
            } else {
                st = 0;
            }
        }
        size_t take = end < max - have ? end : max - have;
        if (have + take > cap) {
            size_t ncap = cap ? cap * 2 : sizeof chunk;
            while (ncap < have + take)
                ncap *= 2;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                return -1;
            }
            buf = nb;
            cap = ncap;
        }
        memcpy(buf + have, chunk, take);
        have += take;
        off += end;
        if (found)
            break;
    }
    if (buf == NULL && (buf = malloc(1)) == NULL)
        return -1;                   /* an empty file: still a buffer, never NULL */
    *hdr = buf;
    *len = have;
    *hsize = off;
    return 0;
}

static int load_header(struct imap_fetch_job *j)
{
    if (j->have_hdr)
        return 0;
    if (imap_read_header(j->fd, IMAP_HEADER_PARSE_MAX, &j->hdr, &j->hdrlen, &j->hsize) != 0)
        return -1;
    j->have_hdr = true;
    return 0;
}

/* LEN bytes of the file from OFF onto OUT, or -1 (the file is shorter
 * than it was: the promised literal cannot be completed). */
static int add_file(struct evbuffer *out, int fd, uint64_t off, size_t len)
{
    struct evbuffer_iovec v;
    if (len == 0)
        return 0;
    if (evbuffer_reserve_space(out, (ev_ssize_t)len, &v, 1) < 1)
        return -1;
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, (char *)v.iov_base + got, len - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    v.iov_len = len;
    return evbuffer_commit_space(out, &v, 1);
}

static uint64_t count_lines(int fd, uint64_t from, uint64_t to)
{
    char buf[CHUNK];
    uint64_t n = 0;
    while (from < to) {
        size_t want = to - from < sizeof buf ? (size_t)(to - from) : sizeof buf;
        ssize_t r = pread(fd, buf, want, (off_t)from);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        for (ssize_t i = 0; i < r; i++)
            n += buf[i] == '\n';
        from += (uint64_t)r;
    }
    return n;
}

/* ---- items ------------------------------------------------------------ */

static void put_internaldate(struct evbuffer *out, time_t t)
{
    static const char months[12][4] = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    };
    struct tm tm;
    localtime_r(&t, &tm);
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    evbuffer_add_printf(out, "INTERNALDATE \"%2d-%s-%04d %02d:%02d:%02d %c%02ld%02ld\"",
                        tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
                        tm.tm_min, tm.tm_sec, sign, off / 60, off % 60);
}

/* A literal of the file range [OFF, OFF+LEN): all of it now if small,
 * else the first chunk and the rest as the output drains. */
static int put_file_literal(struct imap_fetch_job *j, struct evbuffer *out, uint64_t off,
                            uint64_t len)
{
    evbuffer_add_printf(out, "{%llu}\r\n", (unsigned long long)len);
    j->body_bytes += len;
    size_t now = len < CHUNK ? (size_t)len : CHUNK;
    if (add_file(out, j->fd, off, now) != 0)
        return -1;
    j->stream_off = off + now;
    j->stream_left = len - now;
    return 0;
}

static void put_buffer_literal(struct imap_fetch_job *j, struct evbuffer *out,
                               struct evbuffer *content, const struct imap_fetch_att *a)
{
    size_t len = evbuffer_get_length(content), off = 0;
    if (a->partial) {
        off = a->off < len ? a->off : len;
        len = len - off < a->len ? len - off : a->len;
    }
    evbuffer_drain(content, off);
    evbuffer_add_printf(out, "{%zu}\r\n", len);
    evbuffer_remove_buffer(content, out, len);
    j->body_bytes += len;
}

/* The byte range of a section of a single-part message; false for NIL
 * (a part that does not exist). */
static bool section_range(struct imap_fetch_job *j, const struct imap_fetch_att *a,
                          uint64_t *from, uint64_t *to)
{
    enum imap_section sec = a->sec;
    if (a->nparts > 0) {
        /* A non-multipart message has exactly one part, "1", its body
         * (RFC 3501 6.4.5); multipart bodies are not parsed. */
        if (a->nparts != 1 || a->part[0] != 1 || sec != SEC_ALL
            || imap_body_kind(j->hdr, j->hdrlen) == BODY_UNSUPPORTED)
            return false;
        sec = SEC_TEXT;
    }
    *from = sec == SEC_TEXT ? j->hsize : 0;
    *to = sec == SEC_HEADER ? j->hsize : j->fsize;
    if (*to > j->fsize)
        *to = j->fsize;
    if (*from > *to)
        *from = *to;
    return true;
}

static int put_section(struct imap_fetch_job *j, struct evbuffer *out, const struct imap_fetch_att *a)
{
    char name[IMAP_ATT_NAME_MAX];
    size_t n = imap_fetch_att_name(a, name, sizeof name);
    evbuffer_add(out, name, n);     /* the parser's limits make it fit */
    evbuffer_add(out, " ", 1);
    if (a->sec == SEC_FIELDS || a->sec == SEC_FIELDS_NOT) {
        if (a->nparts > 0) {
            evbuffer_add(out, "NIL", 3);
            return 0;
        }
        struct evbuffer *tmp = evbuffer_new();
        if (tmp == NULL)
            return -1;
        imap_header_fields(tmp, j->hdr, j->hdrlen, a->fields, a->nfields, a->sec == SEC_FIELDS_NOT);
        put_buffer_literal(j, out, tmp, a);
        evbuffer_free(tmp);
        return 0;
    }
    uint64_t from, to;
    if (!section_range(j, a, &from, &to)) {
        evbuffer_add(out, "NIL", 3);
        return 0;
    }
    if (a->partial) {
        from = from + a->off < to ? from + a->off : to;
        if (to - from > a->len)
            to = from + a->len;
    }
    return put_file_literal(j, out, from, to - from);
}

static int put_item(struct imap_session *s, struct imap_fetch_job *j, const struct imap_fetch_att *a)
{
    size_t i = j->idx[j->pos];
    const struct mbox_msg *m = mailbox_msg(s->mb, i);
    struct evbuffer *out = mconn_output(s->c);
    if (!j->first)
        evbuffer_add(out, " ", 1);
    j->first = false;
    switch (a->kind) {
    case FA_FLAGS:
        evbuffer_add_printf(out, "FLAGS ");
        imap_put_flags(out, m);
        j->flags_sent = true;
        return 0;
    case FA_UID:
        evbuffer_add_printf(out, "UID %u", m->uid);
        return 0;
    case FA_RFC822_SIZE:
        evbuffer_add_printf(out, "RFC822.SIZE %llu", (unsigned long long)m->size);
        return 0;
    case FA_INTERNALDATE:
        put_internaldate(out, m->internaldate);
        return 0;
    case FA_ENVELOPE:
        evbuffer_add_printf(out, "ENVELOPE ");
        imap_envelope(out, j->hdr, j->hdrlen);
        return 0;
    case FA_BODY:
    case FA_BODYSTRUCTURE: {
        bool ext = a->kind == FA_BODYSTRUCTURE;
        uint64_t body = j->fsize > j->hsize ? j->fsize - j->hsize : 0;
        uint64_t lines = imap_body_kind(j->hdr, j->hdrlen) == BODY_TEXT
                             ? count_lines(j->fd, j->hsize, j->fsize) : 0;
        evbuffer_add_printf(out, "%s ", ext ? "BODYSTRUCTURE" : "BODY");
        imap_body_structure(out, j->hdr, j->hdrlen, body, lines, ext);
        return 0;
    }
    case FA_RFC822:
        evbuffer_add_printf(out, "RFC822 ");
        return put_file_literal(j, out, 0, j->fsize);
    case FA_RFC822_HEADER:
        evbuffer_add_printf(out, "RFC822.HEADER ");
        return put_file_literal(j, out, 0, j->hsize < j->fsize ? j->hsize : j->fsize);
    case FA_RFC822_TEXT:
        evbuffer_add_printf(out, "RFC822.TEXT ");
        return put_file_literal(j, out, j->hsize < j->fsize ? j->hsize : j->fsize,
                                j->hsize < j->fsize ? j->fsize - j->hsize : 0);
    case FA_SECTION:
        return put_section(j, out, a);
    }
    return 0;
}

/* ---- one message ------------------------------------------------------ */

static void end_message(struct imap_session *s, struct imap_fetch_job *j)
{
    if (j->in_msg) {
        size_t i = j->idx[j->pos];
        const struct mbox_msg *m = mailbox_msg(s->mb, i);
        struct evbuffer *out = mconn_output(s->c);
        /* RFC 3501 6.4.5: the \Seen this FETCH set is reported with it. */
        if (j->seen_set && !j->flags_sent) {
            evbuffer_add_printf(out, " FLAGS ");
            imap_put_flags(out, m);
        }
        evbuffer_add(out, ")\r\n", 3);
        if (req_any(&j->req, is_body_item))
            log_info("imap: fetch: mailbox=%s, uid=%u, size=%llu, client=%s",
                     s->mbox->name, m->uid, (unsigned long long)j->body_bytes, mconn_ip(s->c));
    }
    if (j->fd >= 0)
        close(j->fd);
    free(j->hdr);
    j->fd = -1;
    j->hdr = NULL;
    j->hdrlen = 0;
    j->hsize = 0;
    j->have_hdr = false;
    j->in_msg = j->seen_set = j->flags_sent = false;
    j->body_bytes = 0;
    j->stream_left = 0;
    j->att = 0;
    j->pos++;
}

/* Opens the message if its items need the file and checks it can be
 * described; false to skip it (counted for the tagged reply). */
static bool open_message(struct imap_session *s, struct imap_fetch_job *j, size_t i)
{
    if (!req_any(&j->req, needs_file))
        return true;
    j->fd = mailbox_open_msg(s->mb, i);
    if (j->fd < 0) {
        if (errno == ENOENT) {
            j->gone++;
        } else {
            j->errors++;
            log_warn("imap: cannot open message: mailbox=%s, uid=%u: %s", s->mbox->name,
                     mailbox_msg(s->mb, i)->uid, strerror(errno));
        }
        return false;
    }
    struct stat st;
    if (fstat(j->fd, &st) != 0 || (req_any(&j->req, needs_header) && load_header(j) != 0)) {
        j->errors++;
        return false;
    }
    j->fsize = (uint64_t)st.st_size;
    if (req_any(&j->req, is_structure) && imap_body_kind(j->hdr, j->hdrlen) == BODY_UNSUPPORTED) {
        j->unsupported++;
        return false;
    }
    return true;
}

static bool begin_message(struct imap_session *s, struct imap_fetch_job *j)
{
    size_t i = j->idx[j->pos];
    j->fd = -1;
    if (!open_message(s, j, i))
        return false;
    const struct mbox_msg *m = mailbox_msg(s->mb, i);
    if (req_any(&j->req, sets_seen) && !s->readonly && !(m->flags & MF_SEEN)) {
        if (mailbox_set_flags(s->mb, i, m->flags | MF_SEEN) == 0)
            j->seen_set = true;
        else
            log_warn("imap: cannot set \\Seen: mailbox=%s, uid=%u", s->mbox->name, m->uid);
        m = mailbox_msg(s->mb, i);
    }
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_printf(out, "* %zu FETCH (", i + 1);
    j->first = true;
    /* RFC 3501 6.4.8: UID FETCH answers always carry the UID. */
    if (j->uid && !req_any(&j->req, is_uid)) {
        evbuffer_add_printf(out, "UID %u", m->uid);
        j->first = false;
    }
    j->in_msg = true;
    j->att = 0;
    return true;
}

/* ---- the job ---------------------------------------------------------- */

void imap_fetch_free(struct imap_fetch_job *j)
{
    if (j->fd >= 0)
        close(j->fd);
    free(j->hdr);
    free(j->idx);
    imap_parser_free(&j->ps);
    free(j);
}

static void finish(struct imap_session *s, struct imap_fetch_job *j)
{
    if (j->gone > 0)
        imap_tagged(s, "NO [EXPUNGEISSUED] Some messages were removed by another session");
    else if (j->unsupported > 0)
        imap_tagged(s, "NO [CANNOT] BODY and BODYSTRUCTURE of multipart or message/rfc822 "
                       "messages are not supported");
    else if (j->errors > 0)
        imap_tagged(s, "NO [SERVERBUG] Some messages could not be read");
    else
        imap_tagged(s, "OK %sFETCH completed", j->uid ? "UID " : "");
    s->job = NULL;
    imap_fetch_free(j);
}

/* The literal being streamed broke off (the file shrank): the response
 * cannot be completed, only the connection ended. */
static void abort_job(struct imap_session *s, struct imap_fetch_job *j)
{
    log_warn("imap: message changed while being sent: mailbox=%s, uid=%u, client=%s",
             s->mbox->name, mailbox_msg(s->mb, j->idx[j->pos])->uid, mconn_ip(s->c));
    s->job = NULL;
    imap_fetch_free(j);
    s->state = I_LOGOUT;
    mconn_close(s->c);
}

bool imap_fetch_run(struct imap_session *s)
{
    struct imap_fetch_job *j = s->job;
    while (j->pos < j->n) {
        if (mconn_pending(s->c) > IMAP_OUT_HIGH_WATER)
            return false;
        if (j->stream_left > 0) {
            size_t now = j->stream_left < CHUNK ? (size_t)j->stream_left : CHUNK;
            if (add_file(mconn_output(s->c), j->fd, j->stream_off, now) != 0) {
                abort_job(s, j);
                return true;
            }
            j->stream_off += now;
            j->stream_left -= now;
            continue;
        }
        if (!j->in_msg && !begin_message(s, j)) {
            end_message(s, j);
            continue;
        }
        if (j->att == j->req.n) {
            end_message(s, j);
            continue;
        }
        if (put_item(s, j, &j->req.att[j->att++]) != 0) {
            abort_job(s, j);
            return true;
        }
    }
    finish(s, j);
    return true;
}

void imap_cmd_fetch(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    struct imap_fetch_job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        imap_tagged(s, "NO [SERVERBUG] Out of memory");
        return;
    }
    j->fd = -1;
    j->uid = uid;
    struct imap_seqset set;
    if (!imap_sp(ps) || !imap_seqset(ps, &set) || !imap_sp(ps)
        || !imap_fetch_atts(ps, &j->req) || !imap_eol(ps)) {
        imap_bad(s, "%s", ps->error != NULL ? ps->error : "Syntax error");
        free(j);
        return;
    }
    if (!imap_resolve_set(s, &set, uid, &j->idx, &j->n)) {
        imap_bad(s, "Invalid message sequence number");
        free(j);
        return;
    }
    /* The job takes the arena with it: the field names are in there. */
    j->ps = *ps;
    ps->arena = NULL;
    s->job = j;
    s->wait = W_FETCH;
    if (imap_fetch_run(s))
        s->wait = s->wait == W_FETCH ? W_COMMAND : s->wait;
}
