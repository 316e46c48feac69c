/* SEARCH and UID SEARCH (RFC 3501 6.4.4, 7.2.5): the key tree from
 * imap_parse.c evaluated against each message, the answer in one
 * "* SEARCH" line (fdm wants it as the first untagged response).
 *
 * Flag, size, UID and date keys use the mailbox view only; header and
 * text keys open the message, once per message however many keys ask. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "imap_envelope.h"
#include "imap_private.h"
#include "log.h"

#define SCAN_CHUNK (64 * 1024)

struct search_ctx {
    struct imap_session *s;
    size_t i, count;                 /* the message (0-based) and how many */
    const struct mbox_msg *m;
    uint32_t last_uid;
    int fd;                          /* -1: not opened yet; -2: cannot be */
    char *hdr;
    size_t hdrlen;
    uint64_t hsize, fsize;
    unsigned errors;
};

/* ---- the message's file, when a key needs it -------------------------- */

static bool open_file(struct search_ctx *x)
{
    if (x->fd >= 0)
        return true;
    if (x->fd == -2)
        return false;
    x->fd = mailbox_open_msg(x->s->mb, x->i);
    if (x->fd < 0) {
        x->fd = -2;
        if (errno != ENOENT)
            x->errors++;
        return false;
    }
    off_t end = lseek(x->fd, 0, SEEK_END);
    if (end < 0 || imap_read_header(x->fd, IMAP_HEADER_PARSE_MAX, &x->hdr, &x->hdrlen,
                                    &x->hsize) != 0) {
        close(x->fd);
        x->fd = -2;
        x->errors++;
        return false;
    }
    x->fsize = (uint64_t)end;
    return true;
}

static void close_file(struct search_ctx *x)
{
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;                      /* also after -2: the next message is another file */
    free(x->hdr);
    x->hdr = NULL;
}

/* NEEDLE in the file range [FROM, TO), read in overlapping chunks. */
static bool file_contains(struct search_ctx *x, uint64_t from, uint64_t to,
                          const char *needle, size_t nlen)
{
    if (nlen == 0)
        return true;
    if (nlen > SCAN_CHUNK / 2)
        return false;                /* longer than any command allows anyway */
    char *buf = malloc(SCAN_CHUNK);
    if (buf == NULL)
        return false;
    bool hit = false;
    while (!hit && from < to) {
        size_t want = to - from < SCAN_CHUNK ? (size_t)(to - from) : SCAN_CHUNK;
        ssize_t r = pread(x->fd, buf, want, (off_t)from);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        hit = imap_contains(buf, (size_t)r, needle, nlen);
        if ((size_t)r < nlen || from + (uint64_t)r >= to)
            break;
        from += (uint64_t)r - (nlen - 1);  /* a match may straddle chunks */
    }
    free(buf);
    return hit;
}

/* The calendar day of T in local time (INTERNALDATE is shown in local
 * time), as 00:00 UTC of that day, comparable with parsed dates. */
static time_t local_day(time_t t)
{
    struct tm tm;
    localtime_r(&t, &tm);
    struct tm d = {.tm_mday = tm.tm_mday, .tm_mon = tm.tm_mon, .tm_year = tm.tm_year};
    return timegm(&d);
}

/* ---- evaluation ------------------------------------------------------- */

static bool match(struct search_ctx *x, const struct imap_search_key *k);

static bool match_all(struct search_ctx *x, const struct imap_search_key *k)
{
    for (; k != NULL; k = k->next)
        if (!match(x, k))
            return false;
    return true;
}

static bool flag(const struct search_ctx *x, unsigned f)
{
    return (x->m->flags & f) != 0;
}

static bool match_date(struct search_ctx *x, const struct imap_search_key *k)
{
    time_t day;
    if (k->type == SK_BEFORE || k->type == SK_ON || k->type == SK_SINCE) {
        day = local_day(x->m->internaldate);
    } else if (!open_file(x) || !imap_header_day(x->hdr, x->hdrlen, &day)) {
        return false;
    }
    switch (k->type) {
    case SK_BEFORE: case SK_SENTBEFORE: return day < k->day;
    case SK_ON: case SK_SENTON: return day == k->day;
    default: return day >= k->day;
    }
}

static bool match_text(struct search_ctx *x, const struct imap_search_key *k)
{
    if (!open_file(x))
        return false;
    uint64_t body = x->hsize < x->fsize ? x->hsize : x->fsize;
    switch (k->type) {
    case SK_HEADER:
        return imap_header_search(x->hdr, x->hdrlen, k->field, k->str.s, k->str.len);
    case SK_BODY:
        return file_contains(x, body, x->fsize, k->str.s, k->str.len);
    default:                         /* SK_TEXT: header and body */
        return file_contains(x, 0, x->fsize, k->str.s, k->str.len);
    }
}

static bool match(struct search_ctx *x, const struct imap_search_key *k)
{
    switch (k->type) {
    case SK_AND: return match_all(x, k->kids);
    case SK_OR: return match(x, k->kids) || match(x, k->kids->next);
    case SK_NOT: return !match(x, k->kids);
    case SK_ALL: return true;
    case SK_ANSWERED: return flag(x, MF_ANSWERED);
    case SK_DELETED: return flag(x, MF_DELETED);
    case SK_DRAFT: return flag(x, MF_DRAFT);
    case SK_FLAGGED: return flag(x, MF_FLAGGED);
    case SK_SEEN: return flag(x, MF_SEEN);
    case SK_UNANSWERED: return !flag(x, MF_ANSWERED);
    case SK_UNDELETED: return !flag(x, MF_DELETED);
    case SK_UNDRAFT: return !flag(x, MF_DRAFT);
    case SK_UNFLAGGED: return !flag(x, MF_FLAGGED);
    case SK_UNSEEN: return !flag(x, MF_SEEN);
    case SK_NEW: return x->m->recent && !flag(x, MF_SEEN);
    case SK_OLD: return !x->m->recent;
    case SK_RECENT: return x->m->recent;
    case SK_KEYWORD: return false;   /* no keywords are stored */
    case SK_UNKEYWORD: return true;
    case SK_LARGER: return x->m->size > k->num;
    case SK_SMALLER: return x->m->size < k->num;
    case SK_UID: return imap_seqset_contains(&k->set, x->m->uid, x->last_uid);
    case SK_SEQ: return imap_seqset_contains(&k->set, (uint32_t)(x->i + 1), (uint32_t)x->count);
    case SK_BEFORE: case SK_ON: case SK_SINCE:
    case SK_SENTBEFORE: case SK_SENTON: case SK_SENTSINCE:
        return match_date(x, k);
    case SK_HEADER: case SK_BODY: case SK_TEXT:
        return match_text(x, k);
    }
    return false;
}

/* ---- the command ------------------------------------------------------ */

/* The optional "CHARSET name" before the keys. Only ASCII and UTF-8 are
 * known; the searches compare bytes, ASCII letters without case. */
static bool charset(struct imap_parser *ps, bool *known)
{
    *known = true;
    const char *save = ps->p;
    const char *word;
    if (!imap_atom_upper(ps, &word) || strcmp(word, "CHARSET") != 0) {
        ps->p = save;
        ps->error = NULL;
        return true;
    }
    struct imap_str cs;
    if (!imap_sp(ps) || !imap_astring(ps, &cs) || !imap_sp(ps))
        return false;
    *known = strcasecmp(cs.s, "US-ASCII") == 0 || strcasecmp(cs.s, "UTF-8") == 0;
    return true;
}

void imap_cmd_search(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    struct imap_search_key *root;
    bool known;
    if (!imap_sp(ps) || !charset(ps, &known) || !imap_search_keys(ps, &root) || !imap_eol(ps)) {
        imap_bad(s, "%s", ps->error != NULL ? ps->error : "Syntax error");
        return;
    }
    if (!known) {
        imap_tagged(s, "NO [BADCHARSET (US-ASCII UTF-8)] Unknown charset");
        return;
    }
    struct search_ctx x = {.s = s, .count = mailbox_count(s->mb), .fd = -1};
    if (x.count > 0)
        x.last_uid = mailbox_msg(s->mb, x.count - 1)->uid;
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_printf(out, "* SEARCH");
    for (x.i = 0; x.i < x.count; x.i++) {
        x.m = mailbox_msg(s->mb, x.i);
        if (match(&x, root))
            evbuffer_add_printf(out, " %lu", uid ? (unsigned long)x.m->uid : (unsigned long)(x.i + 1));
        close_file(&x);
    }
    evbuffer_add(out, "\r\n", 2);
    if (x.errors > 0) {
        log_warn("imap: search could not read %u messages: mailbox=%s", x.errors, s->mbox->name);
        imap_tagged(s, "NO [SERVERBUG] Some messages could not be read");
        return;
    }
    imap_tagged(s, "OK %sSEARCH completed", uid ? "UID " : "");
}
