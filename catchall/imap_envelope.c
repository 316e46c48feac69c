/* RFC 5322 headers for IMAP: ENVELOPE, HEADER.FIELDS, Date: days, strings.
 * Stored messages have CRLF line ends, but bare LFs are tolerated so a
 * file put into the Maildir by hand does not break the parser. */
#include "imap_envelope.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#define MISSING_DOMAIN "MISSING_DOMAIN" /* host of an address without '@', as Dovecot */
#define ADDR_MAX 1000                   /* addresses rendered from one field */

/* ---- strings ---------------------------------------------------------- */

static bool quotable(const char *s, size_t len)
{
    if (len > IMAP_QUOTED_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\0' || c == '\r' || c == '\n' || c >= 0x80)
            return false;
    }
    return true;
}

void imap_put_string(struct evbuffer *out, const char *s, size_t len)
{
    if (!quotable(s, len)) {
        evbuffer_add_printf(out, "{%zu}\r\n", len);
        evbuffer_add(out, s, len);
        return;
    }
    evbuffer_add(out, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '"' && s[i] != '\\')
            continue;
        evbuffer_add(out, s + run, i - run);
        evbuffer_add(out, "\\", 1);
        run = i;
    }
    evbuffer_add(out, s + run, len - run);
    evbuffer_add(out, "\"", 1);
}

void imap_put_nstring(struct evbuffer *out, const char *s, size_t len)
{
    if (s == NULL)
        evbuffer_add(out, "NIL", 3);
    else
        imap_put_string(out, s, len);
}

/* ---- header fields ---------------------------------------------------- */

struct field {
    const char *name;
    size_t namelen;
    const char *value, *value_end; /* after the colon, up to the last line end */
    const char *start, *end;       /* the whole field with its line ends */
};

/* The end of the line at P: after its LF, or END. */
static const char *line_end(const char *p, const char *end)
{
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    return lf != NULL ? lf + 1 : end;
}

static bool blank_line(const char *p, const char *end)
{
    return p < end && (*p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n'));
}

/* The next field at *P; false at the blank line or the end. Lines that are
 * not fields (no colon, or a continuation with nothing before it) are
 * skipped. */
static bool next_field(const char **pp, const char *end, struct field *f)
{
    const char *p = *pp;
    while (p < end && !blank_line(p, end)) {
        const char *le = line_end(p, end);
        const char *q = le;
        while (q < end && (*q == ' ' || *q == '\t'))
            q = line_end(q, end);
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon == NULL || *p == ' ' || *p == '\t') {
            p = q;
            continue;
        }
        const char *ne = colon;
        while (ne > p && (ne[-1] == ' ' || ne[-1] == '\t'))
            ne--;                    /* obs-optional: WSP before the colon */
        f->name = p;
        f->namelen = (size_t)(ne - p);
        f->value = colon + 1;
        f->value_end = q;
        f->start = p;
        f->end = q;
        *pp = q;
        return true;
    }
    *pp = p;
    return false;
}

static bool name_is(const struct field *f, const char *name)
{
    return strlen(name) == f->namelen && strncasecmp(f->name, name, f->namelen) == 0;
}

/* Unfolds (drops CR and LF), turns NULs into spaces and trims. */
static char *unfold(const char *v, const char *end)
{
    char *d = malloc((size_t)(end - v) + 1);
    if (d == NULL)
        return NULL;
    size_t n = 0;
    for (; v < end; v++) {
        if (*v == '\r' || *v == '\n')
            continue;
        d[n++] = *v == '\0' ? ' ' : *v;
    }
    while (n > 0 && (d[n - 1] == ' ' || d[n - 1] == '\t'))
        n--;
    d[n] = '\0';
    size_t lead = strspn(d, " \t");
    memmove(d, d + lead, n - lead + 1);
    return d;
}

char *imap_header_value(const char *hdr, size_t len, const char *name)
{
    const char *p = hdr, *end = hdr + len;
    struct field f;
    while (next_field(&p, end, &f))
        if (name_is(&f, name))
            return unfold(f.value, f.value_end);
    return NULL;
}

bool imap_header_search(const char *hdr, size_t len, const char *name,
                        const char *str, size_t slen)
{
    const char *p = hdr, *end = hdr + len;
    struct field f;
    while (next_field(&p, end, &f)) {
        if (!name_is(&f, name))
            continue;
        char *v = unfold(f.value, f.value_end);
        bool hit = v != NULL && imap_contains(v, strlen(v), str, slen);
        free(v);
        if (hit)
            return true;
    }
    return false;
}

void imap_header_fields(struct evbuffer *out, const char *hdr, size_t len,
                        const char *const *names, size_t n, bool not)
{
    const char *p = hdr, *end = hdr + len;
    struct field f;
    while (next_field(&p, end, &f)) {
        bool listed = false;
        for (size_t i = 0; i < n && !listed; i++)
            listed = name_is(&f, names[i]);
        if (listed == not)
            continue;
        evbuffer_add(out, f.start, (size_t)(f.end - f.start));
        /* A last field without a line end still gets one. */
        if (f.end[-1] != '\n')
            evbuffer_add(out, "\r\n", 2);
    }
    evbuffer_add(out, "\r\n", 2);
}

bool imap_contains(const char *hay, size_t hlen, const char *needle, size_t nlen)
{
    if (nlen == 0)
        return true;
    for (size_t i = 0; i + nlen <= hlen; i++)
        if (strncasecmp(hay + i, needle, 1) == 0 && strncasecmp(hay + i, needle, nlen) == 0)
            return true;
    return false;
}

/* ---- addresses (RFC 5322 3.4, leniently) ------------------------------ */

enum tok_kind { TK_END, TK_WORD, TK_QUOTED, TK_DLIT, TK_SPECIAL };

struct tok {
    enum tok_kind kind;
    const char *s;                   /* TK_WORD, TK_DLIT: as written; TK_QUOTED: */
    size_t len;                      /* inside the quotes, still escaped */
    char c;                          /* TK_SPECIAL */
};

struct lexer {
    const char *p;
    struct tok t;                    /* the current token */
};

static bool word_char(unsigned char c)
{
    return c > ' ' && c != 0x7f && strchr("()<>[]:;@,\"", c) == NULL;
}

static void skip_cfws(struct lexer *lx)
{
    int depth = 0;
    for (;;) {
        unsigned char c = (unsigned char)*lx->p;
        if (c == '\0')
            return;
        if (depth > 0 && c == '\\' && lx->p[1] != '\0') {
            lx->p += 2;
            continue;
        }
        if (c == '(')
            depth++;
        else if (c == ')' && depth > 0)
            depth--;
        else if (depth == 0 && c != ' ' && c != '\t')
            return;
        lx->p++;
    }
}

static void lex(struct lexer *lx)
{
    skip_cfws(lx);
    const char *s = lx->p;
    struct tok *t = &lx->t;
    t->s = s;
    t->len = 0;
    if (*s == '\0') {
        t->kind = TK_END;
        return;
    }
    if (*s == '"') {
        const char *q = s + 1;
        while (*q != '\0' && *q != '"')
            q += (*q == '\\' && q[1] != '\0') ? 2 : 1;
        if (*q != '"') {             /* unterminated: unreadable to the end */
            t->kind = TK_SPECIAL;
            t->c = '"';
            lx->p = q;
            return;
        }
        t->kind = TK_QUOTED;
        t->s = s + 1;
        t->len = (size_t)(q - s - 1);
        lx->p = q + 1;
        return;
    }
    if (*s == '[') {
        const char *q = strchr(s, ']');
        q = q != NULL ? q + 1 : s + strlen(s);
        t->kind = TK_DLIT;
        t->len = (size_t)(q - s);
        lx->p = q;
        return;
    }
    if (!word_char((unsigned char)*s)) {
        t->kind = TK_SPECIAL;
        t->c = *s;
        lx->p = s + 1;
        return;
    }
    while (word_char((unsigned char)*lx->p))
        lx->p++;
    t->kind = TK_WORD;
    t->len = (size_t)(lx->p - s);
}

static bool special(const struct lexer *lx, char c)
{
    return lx->t.kind == TK_SPECIAL && lx->t.c == c;
}

/* Growing string storage for one field's addresses; offsets stay valid
 * across realloc where pointers would not. */
struct sbuf {
    char *b;
    size_t n, cap;
    bool oom;
};

#define NIL_OFF SIZE_MAX

static size_t sb_begin(struct sbuf *sb)
{
    return sb->n;
}

static void sb_add(struct sbuf *sb, const char *s, size_t len)
{
    if (sb->oom)
        return;
    if (sb->n + len + 1 > sb->cap) {
        size_t cap = (sb->cap + len + 1) * 2;
        char *b = realloc(sb->b, cap);
        if (b == NULL) {
            sb->oom = true;
            return;
        }
        sb->b = b;
        sb->cap = cap;
    }
    memcpy(sb->b + sb->n, s, len);
    sb->n += len;
}

/* Ends the string begun at OFF; returns OFF. */
static size_t sb_end(struct sbuf *sb, size_t off)
{
    sb_add(sb, "", 1);
    return off;
}

static size_t sb_str(struct sbuf *sb, const char *s)
{
    size_t off = sb_begin(sb);
    sb_add(sb, s, strlen(s));
    return sb_end(sb, off);
}

static void sb_unescape(struct sbuf *sb, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\' && i + 1 < len)
            i++;
        sb_add(sb, s + i, 1);
    }
}

struct addr {
    size_t name, adl, mailbox, host; /* offsets into the sbuf, or NIL_OFF */
};

struct addrs {
    struct sbuf sb;
    struct addr *v;
    size_t n, cap;
};

static void add_addr(struct addrs *as, size_t name, size_t adl, size_t mailbox, size_t host)
{
    if (as->n == ADDR_MAX || as->sb.oom)
        return;
    if (as->n == as->cap) {
        size_t cap = as->cap ? as->cap * 2 : 8;
        struct addr *v = realloc(as->v, cap * sizeof *v);
        if (v == NULL) {
            as->sb.oom = true;
            return;
        }
        as->v = v;
        as->cap = cap;
    }
    as->v[as->n++] = (struct addr){name, adl, mailbox, host};
}

/* A display name: words joined by one space, quoted strings unescaped.
 * Stops at the first special. NIL_OFF if there were no words. */
static size_t phrase(struct lexer *lx, struct sbuf *sb)
{
    size_t off = sb_begin(sb);
    bool any = false;
    while (lx->t.kind == TK_WORD || lx->t.kind == TK_QUOTED) {
        if (any)
            sb_add(sb, " ", 1);
        if (lx->t.kind == TK_QUOTED)
            sb_unescape(sb, lx->t.s, lx->t.len);
        else
            sb_add(sb, lx->t.s, lx->t.len);
        any = true;
        lex(lx);
    }
    return any ? sb_end(sb, off) : NIL_OFF;
}

static bool needs_quotes(const char *s, size_t len)
{
    if (len == 0)
        return true;
    for (size_t i = 0; i < len; i++)
        if (!word_char((unsigned char)s[i]))
            return true;
    return false;
}

/* A local part: words and quoted strings glued together (the dots are in
 * the words); a quoted string that is not a dot-atom keeps its quotes. */
static size_t local_part(struct lexer *lx, struct sbuf *sb)
{
    size_t off = sb_begin(sb);
    bool dot = true;                 /* words are glued only across a dot */
    while ((lx->t.kind == TK_WORD || lx->t.kind == TK_QUOTED)
           && (dot || (lx->t.len > 0 && lx->t.s[0] == '.'))) {
        dot = lx->t.kind == TK_WORD && lx->t.s[lx->t.len - 1] == '.';
        if (lx->t.kind == TK_QUOTED && needs_quotes(lx->t.s, lx->t.len)) {
            sb_add(sb, "\"", 1);
            sb_add(sb, lx->t.s, lx->t.len);
            sb_add(sb, "\"", 1);
        } else if (lx->t.kind == TK_QUOTED) {
            sb_unescape(sb, lx->t.s, lx->t.len);
        } else {
            sb_add(sb, lx->t.s, lx->t.len);
        }
        lex(lx);
    }
    return sb_end(sb, off);
}

static size_t domain(struct lexer *lx, struct sbuf *sb)
{
    size_t off = sb_begin(sb);
    bool any = false;
    while (lx->t.kind == TK_WORD || lx->t.kind == TK_DLIT) {
        sb_add(sb, lx->t.s, lx->t.len);
        any = true;
        lex(lx);
    }
    if (!any)
        return sb_str(sb, MISSING_DOMAIN);
    return sb_end(sb, off);
}

/* Skips to the next ',' (or ';' in a group) after something unreadable. */
static void skip_address(struct lexer *lx, bool in_group)
{
    while (lx->t.kind != TK_END && !special(lx, ',') && !(in_group && special(lx, ';')))
        lex(lx);
}

/* "<" [route ":"] local "@" domain ">", the '<' being current. */
static void angle_addr(struct lexer *lx, struct addrs *as, size_t name, bool in_group)
{
    struct sbuf *sb = &as->sb;
    lex(lx);
    size_t adl = NIL_OFF;
    if (special(lx, '@')) {          /* obs-route: "@a,@b:" */
        adl = sb_begin(sb);
        while (lx->t.kind != TK_END && !special(lx, ':') && !special(lx, '>')) {
            if (lx->t.kind == TK_SPECIAL)
                sb_add(sb, &lx->t.c, 1);
            else
                sb_add(sb, lx->t.s, lx->t.len);
            lex(lx);
        }
        sb_end(sb, adl);
        if (special(lx, ':'))
            lex(lx);
    }
    if (special(lx, '>')) {          /* "<>": no address */
        lex(lx);
        return;
    }
    size_t mailbox = local_part(lx, sb);
    size_t host;
    if (special(lx, '@')) {
        lex(lx);
        host = domain(lx, sb);
    } else {
        host = sb_str(sb, MISSING_DOMAIN);
    }
    if (!special(lx, '>')) {
        skip_address(lx, in_group);
        return;
    }
    lex(lx);
    add_addr(as, name, adl, mailbox, host);
}

/* One mailbox: "name <addr>", "<addr>" or "local@domain". */
static void mailbox(struct lexer *lx, struct addrs *as, bool in_group)
{
    struct sbuf *sb = &as->sb;
    const struct lexer start = *lx;
    size_t name = phrase(lx, sb);
    if (special(lx, '<')) {
        angle_addr(lx, as, name, in_group);
        return;
    }
    /* Not a display name after all: read it again as an addr-spec. */
    *lx = start;
    if (name != NIL_OFF)
        sb->n = name;
    if (lx->t.kind != TK_WORD && lx->t.kind != TK_QUOTED) {
        skip_address(lx, in_group);
        return;
    }
    size_t local = local_part(lx, sb);
    size_t host;
    if (special(lx, '@')) {
        lex(lx);
        host = domain(lx, sb);
    } else {
        host = sb_str(sb, MISSING_DOMAIN);
    }
    if (lx->t.kind != TK_END && !special(lx, ',') && !(in_group && special(lx, ';'))) {
        skip_address(lx, in_group);
        return;
    }
    add_addr(as, NIL_OFF, NIL_OFF, local, host);
}

/* "name:" [mailbox-list] ";" with the name read and ':' current. */
static void group(struct lexer *lx, struct addrs *as, size_t name)
{
    lex(lx);
    add_addr(as, NIL_OFF, NIL_OFF, name, NIL_OFF);
    while (lx->t.kind != TK_END && !special(lx, ';')) {
        if (special(lx, ','))
            lex(lx);
        else
            mailbox(lx, as, true);
    }
    if (special(lx, ';'))
        lex(lx);
    add_addr(as, NIL_OFF, NIL_OFF, NIL_OFF, NIL_OFF);
}

static void address_list(const char *value, struct addrs *as)
{
    struct lexer lx = {.p = value};
    lex(&lx);
    while (lx.t.kind != TK_END && !as->sb.oom) {
        if (lx.t.kind == TK_SPECIAL && lx.t.c != '<') {
            lex(&lx);                /* ',' and stray specials */
            continue;
        }
        const struct lexer start = lx;
        size_t name = phrase(&lx, &as->sb);
        if (name != NIL_OFF && special(&lx, ':')) {
            group(&lx, as, name);
            continue;
        }
        as->sb.n = name != NIL_OFF ? name : as->sb.n;
        lx = start;
        mailbox(&lx, as, false);
    }
}

static void put_off(struct evbuffer *out, const struct sbuf *sb, size_t off)
{
    if (off == NIL_OFF)
        evbuffer_add(out, "NIL", 3);
    else
        imap_put_string(out, sb->b + off, strlen(sb->b + off));
}

size_t imap_address_list(struct evbuffer *out, const char *value)
{
    struct addrs as = {0};
    if (value != NULL)
        address_list(value, &as);
    size_t n = as.sb.oom ? 0 : as.n;
    if (n == 0) {
        evbuffer_add(out, "NIL", 3);
    } else {
        evbuffer_add(out, "(", 1);
        for (size_t i = 0; i < n; i++) {
            const struct addr *a = &as.v[i];
            evbuffer_add(out, "(", 1);
            put_off(out, &as.sb, a->name);
            evbuffer_add(out, " ", 1);
            put_off(out, &as.sb, a->adl);
            evbuffer_add(out, " ", 1);
            put_off(out, &as.sb, a->mailbox);
            evbuffer_add(out, " ", 1);
            put_off(out, &as.sb, a->host);
            evbuffer_add(out, ")", 1);
        }
        evbuffer_add(out, ")", 1);
    }
    free(as.sb.b);
    free(as.v);
    return n;
}

/* ---- ENVELOPE --------------------------------------------------------- */

static void put_value(struct evbuffer *out, const char *v)
{
    imap_put_nstring(out, v, v != NULL ? strlen(v) : 0);
}

/* Sender and Reply-To default to From when absent or empty (RFC 3501
 * 7.4.2). */
static void put_addresses_or_from(struct evbuffer *out, const char *v, const char *from)
{
    struct evbuffer *tmp = evbuffer_new();
    if (tmp == NULL) {
        evbuffer_add(out, "NIL", 3);
        return;
    }
    if (imap_address_list(tmp, v) > 0)
        evbuffer_add_buffer(out, tmp);
    else
        imap_address_list(out, from);
    evbuffer_free(tmp);
}

void imap_envelope(struct evbuffer *out, const char *hdr, size_t len)
{
    static const char *const names[] = {
        "Date", "Subject", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
        "In-Reply-To", "Message-ID",
    };
    enum { DATE, SUBJECT, FROM, SENDER, REPLY_TO, TO, CC, BCC, IN_REPLY_TO, MESSAGE_ID, N };
    char *v[N];
    for (int i = 0; i < N; i++)
        v[i] = imap_header_value(hdr, len, names[i]);
    evbuffer_add(out, "(", 1);
    put_value(out, v[DATE]);
    evbuffer_add(out, " ", 1);
    put_value(out, v[SUBJECT]);
    evbuffer_add(out, " ", 1);
    imap_address_list(out, v[FROM]);
    evbuffer_add(out, " ", 1);
    put_addresses_or_from(out, v[SENDER], v[FROM]);
    evbuffer_add(out, " ", 1);
    put_addresses_or_from(out, v[REPLY_TO], v[FROM]);
    for (int i = TO; i <= BCC; i++) {
        evbuffer_add(out, " ", 1);
        imap_address_list(out, v[i]);
    }
    evbuffer_add(out, " ", 1);
    put_value(out, v[IN_REPLY_TO]);
    evbuffer_add(out, " ", 1);
    put_value(out, v[MESSAGE_ID]);
    evbuffer_add(out, ")", 1);
    for (int i = 0; i < N; i++)
        free(v[i]);
}

/* ---- Date: ------------------------------------------------------------ */

bool imap_header_day(const char *hdr, size_t len, time_t *day)
{
    static const char months[] = "janfebmaraprmayjunjulaugsepoctnovdec";
    char *v = imap_header_value(hdr, len, "Date");
    if (v == NULL)
        return false;
    /* [day-of-week ","] day month year ...; comments are rare enough in
     * Date: to be ignored. */
    const char *p = v;
    const char *comma = strchr(p, ',');
    if (comma != NULL)
        p = comma + 1;
    int d, y;
    char mon[4];
    bool ok = sscanf(p, "%2d %3s %4d", &d, mon, &y) == 3 && d >= 1 && d <= 31;
    const char *m = NULL;
    if (ok && strlen(mon) == 3) {
        for (char *c = mon; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        m = strstr(months, mon);
    }
    free(v);
    if (m == NULL || (m - months) % 3 != 0)
        return false;
    if (y < 50)
        y += 2000;                   /* obs-year, RFC 5322 4.3 */
    else if (y < 1000)
        y += 1900;
    struct tm tm = {.tm_mday = d, .tm_mon = (int)(m - months) / 3, .tm_year = y - 1900};
    *day = timegm(&tm);
    return true;
}

/* ---- BODYSTRUCTURE of a single-part message (RFC 3501 7.4.2) ---------- */

static bool mime_token_char(unsigned char c)
{
    return c > ' ' && c < 0x7f && strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

/* A MIME token or quoted string at *P (after CFWS) into a malloc'd
 * string; NULL if there is neither. */
static char *mime_word(const char **pp)
{
    struct lexer lx = {.p = *pp};
    skip_cfws(&lx);
    const char *p = lx.p;
    if (*p == '"') {
        lex(&lx);
        if (lx.t.kind != TK_QUOTED)
            return NULL;
        struct sbuf sb = {0};
        sb_unescape(&sb, lx.t.s, lx.t.len);
        sb_add(&sb, "", 1);
        *pp = lx.p;
        if (sb.oom) {
            free(sb.b);
            return NULL;
        }
        return sb.b;
    }
    const char *s = p;
    while (mime_token_char((unsigned char)*p))
        p++;
    if (p == s)
        return NULL;
    *pp = p;
    return strndup(s, (size_t)(p - s));
}

static bool mime_char(const char **pp, char c)
{
    struct lexer lx = {.p = *pp};
    skip_cfws(&lx);
    if (*lx.p != c)
        return false;
    *pp = lx.p + 1;
    return true;
}

/* ";" attribute "=" value pairs as an IMAP list ("attr" "value" ...), or
 * NIL when there are none. Stops at the first one it cannot read. */
static void mime_params(const char *p, struct evbuffer *out)
{
    size_t n = 0;
    while (mime_char(&p, ';')) {
        char *attr = mime_word(&p);
        char *val = NULL;
        if (attr != NULL && mime_char(&p, '='))
            val = mime_word(&p);
        if (val == NULL) {
            free(attr);
            break;
        }
        evbuffer_add(out, n++ ? " " : "(", 1);
        imap_put_string(out, attr, strlen(attr));
        evbuffer_add(out, " ", 1);
        imap_put_string(out, val, strlen(val));
        free(attr);
        free(val);
    }
    evbuffer_add(out, n ? ")" : "NIL", n ? 1 : 3);
}

/* "type/subtype" of a Content-Type value; *REST is what follows. */
static bool mime_type(const char *v, char **type, char **subtype, const char **rest)
{
    const char *p = v;
    *type = mime_word(&p);
    *subtype = NULL;
    if (*type != NULL && mime_char(&p, '/'))
        *subtype = mime_word(&p);
    if (*subtype == NULL) {
        free(*type);
        *type = NULL;
        return false;
    }
    *rest = p;
    return true;
}

int imap_body_kind(const char *hdr, size_t len)
{
    char *v = imap_header_value(hdr, len, "Content-Type");
    char *type = NULL, *subtype = NULL;
    const char *rest;
    int kind = BODY_TEXT;
    if (v != NULL && mime_type(v, &type, &subtype, &rest)) {
        if (strcasecmp(type, "multipart") == 0
            || (strcasecmp(type, "message") == 0 && strcasecmp(subtype, "rfc822") == 0))
            kind = BODY_UNSUPPORTED;
        else if (strcasecmp(type, "text") != 0)
            kind = BODY_OTHER;
    }
    free(type);
    free(subtype);
    free(v);
    return kind;
}

static void put_header_nstring(struct evbuffer *out, const char *hdr, size_t len, const char *name)
{
    char *v = imap_header_value(hdr, len, name);
    put_value(out, v);
    free(v);
}

void imap_body_structure(struct evbuffer *out, const char *hdr, size_t len, uint64_t size,
                         uint64_t lines, bool extended)
{
    char *v = imap_header_value(hdr, len, "Content-Type");
    char *type = NULL, *subtype = NULL;
    const char *rest = "";
    /* RFC 2045 5.2: no (or an unreadable) Content-Type is text/plain in
     * US-ASCII. */
    bool typed = v != NULL && mime_type(v, &type, &subtype, &rest);
    bool text = !typed || strcasecmp(type, "text") == 0;
    evbuffer_add(out, "(", 1);
    if (typed) {
        imap_put_string(out, type, strlen(type));
        evbuffer_add(out, " ", 1);
        imap_put_string(out, subtype, strlen(subtype));
        evbuffer_add(out, " ", 1);
        mime_params(rest, out);
    } else {
        evbuffer_add_printf(out, "\"text\" \"plain\" (\"charset\" \"us-ascii\")");
    }
    evbuffer_add(out, " ", 1);
    put_header_nstring(out, hdr, len, "Content-ID");
    evbuffer_add(out, " ", 1);
    put_header_nstring(out, hdr, len, "Content-Description");
    evbuffer_add(out, " ", 1);
    char *cte = imap_header_value(hdr, len, "Content-Transfer-Encoding");
    const char *p = cte;
    char *enc = cte != NULL ? mime_word(&p) : NULL;
    if (enc != NULL)
        imap_put_string(out, enc, strlen(enc));
    else
        evbuffer_add(out, "\"7bit\"", 6);
    evbuffer_add_printf(out, " %llu", (unsigned long long)size);
    if (text)
        evbuffer_add_printf(out, " %llu", (unsigned long long)lines);
    if (extended) {
        /* body-fld-md5, body-fld-dsp, body-fld-lang, body-fld-loc */
        evbuffer_add(out, " ", 1);
        put_header_nstring(out, hdr, len, "Content-MD5");
        evbuffer_add(out, " ", 1);
        char *disp = imap_header_value(hdr, len, "Content-Disposition");
        const char *dp = disp;
        char *dtype = disp != NULL ? mime_word(&dp) : NULL;
        if (dtype != NULL) {
            evbuffer_add(out, "(", 1);
            imap_put_string(out, dtype, strlen(dtype));
            evbuffer_add(out, " ", 1);
            mime_params(dp, out);
            evbuffer_add(out, ")", 1);
        } else {
            evbuffer_add(out, "NIL", 3);
        }
        free(dtype);
        free(disp);
        evbuffer_add(out, " NIL NIL", 8);
    }
    evbuffer_add(out, ")", 1);
    free(enc);
    free(cte);
    free(type);
    free(subtype);
    free(v);
}
