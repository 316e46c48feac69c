/* IMAP4rev1 command syntax (RFC 3501 section 9). Each function consumes
 * one production or fails with ps->error set; the first error is kept so
 * the BAD reply names what actually went wrong. */
#include "imap_parse.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "maildir.h"

/* ---- arena ------------------------------------------------------------ */

#define ARENA_CHUNK 8192
#define ARENA_ALIGN 16

struct imap_arena_chunk {
    struct imap_arena_chunk *next;
    size_t size, used;
    _Alignas(ARENA_ALIGN) unsigned char data[];
};

static bool fail(struct imap_parser *ps, const char *why)
{
    if (ps->error == NULL)
        ps->error = why;
    return false;
}

void imap_parser_init(struct imap_parser *ps, const char *cmd, size_t len)
{
    ps->p = cmd;
    ps->end = cmd + len;
    ps->error = NULL;
    ps->arena = NULL;
}

void imap_parser_free(struct imap_parser *ps)
{
    while (ps->arena != NULL) {
        struct imap_arena_chunk *c = ps->arena;
        ps->arena = c->next;
        free(c);
    }
}

void *imap_alloc(struct imap_parser *ps, size_t len)
{
    len = (len + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    struct imap_arena_chunk *c = ps->arena;
    if (c == NULL || c->size - c->used < len) {
        size_t size = len > ARENA_CHUNK ? len : ARENA_CHUNK;
        c = malloc(sizeof *c + size);
        if (c == NULL) {
            fail(ps, "Out of memory");
            return NULL;
        }
        c->size = size;
        c->used = 0;
        c->next = ps->arena;
        ps->arena = c;
    }
    void *r = c->data + c->used;
    c->used += len;
    return r;
}

static char *arena_strndup(struct imap_parser *ps, const char *s, size_t len)
{
    char *d = imap_alloc(ps, len + 1);
    if (d == NULL)
        return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

/* ---- character classes (section 9, formal syntax) ---------------------- */

static bool is_atom_char(unsigned char c)
{
    if (c <= 0x1f || c >= 0x7f)
        return false;
    return strchr("(){ %*\"\\]", c) == NULL;
}

static bool is_astring_char(unsigned char c)
{
    return is_atom_char(c) || c == ']';
}

static bool is_list_char(unsigned char c)
{
    return is_atom_char(c) || c == '%' || c == '*' || c == ']';
}

static bool peek(const struct imap_parser *ps, char c)
{
    return ps->p < ps->end && *ps->p == c;
}

static bool take(struct imap_parser *ps, char c)
{
    if (!peek(ps, c))
        return false;
    ps->p++;
    return true;
}

/* Case-insensitive keyword followed by a non-word character. */
static bool take_word(struct imap_parser *ps, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(ps->end - ps->p) < n || strncasecmp(ps->p, w, n) != 0)
        return false;
    if (ps->p + n < ps->end && (isalnum((unsigned char)ps->p[n]) || ps->p[n] == '.'))
        return false;
    ps->p += n;
    return true;
}

/* ---- basic tokens ----------------------------------------------------- */

bool imap_sp(struct imap_parser *ps)
{
    return take(ps, ' ') || fail(ps, "Missing space");
}

bool imap_take(struct imap_parser *ps, char c)
{
    return take(ps, c);
}

bool imap_expect(struct imap_parser *ps, char c)
{
    return take(ps, c) || fail(ps, "Syntax error");
}

bool imap_at_eol(const struct imap_parser *ps)
{
    return ps->p == ps->end;
}

bool imap_eol(struct imap_parser *ps)
{
    return imap_at_eol(ps) || fail(ps, "Unexpected characters at the end of the command");
}

bool imap_tag(struct imap_parser *ps, const char **tag)
{
    const char *s = ps->p;
    while (ps->p < ps->end && is_astring_char((unsigned char)*ps->p) && *ps->p != '+')
        ps->p++;
    size_t n = (size_t)(ps->p - s);
    if (n == 0 || n > IMAP_TAG_MAX)
        return fail(ps, "Invalid tag");
    *tag = arena_strndup(ps, s, n);
    return *tag != NULL;
}

bool imap_atom_upper(struct imap_parser *ps, const char **atom)
{
    const char *s = ps->p;
    while (ps->p < ps->end && is_atom_char((unsigned char)*ps->p))
        ps->p++;
    size_t n = (size_t)(ps->p - s);
    if (n == 0)
        return fail(ps, "Missing atom");
    char *d = arena_strndup(ps, s, n);
    if (d == NULL)
        return false;
    for (char *q = d; *q; q++)
        *q = (char)toupper((unsigned char)*q);
    *atom = d;
    return true;
}

bool imap_number(struct imap_parser *ps, uint32_t *n)
{
    uint64_t v = 0;
    const char *s = ps->p;
    while (ps->p < ps->end && isdigit((unsigned char)*ps->p)) {
        v = v * 10 + (uint64_t)(*ps->p - '0');
        if (v > UINT32_MAX)
            return fail(ps, "Number too large");
        ps->p++;
    }
    if (ps->p == s)
        return fail(ps, "Missing number");
    *n = (uint32_t)v;
    return true;
}

/* The length of the quoted string at P (after the opening quote), up to
 * the closing quote; -1 if there is none. */
static long quoted_span(const char *p, const char *end)
{
    for (const char *q = p; q < end; q++) {
        if (*q == '"')
            return q - p;
        if (*q == '\\' && q + 1 < end)
            q++;
    }
    return -1;
}

static bool quoted(struct imap_parser *ps, struct imap_str *out)
{
    ps->p++;                         /* the opening quote */
    long span = quoted_span(ps->p, ps->end);
    if (span < 0)
        return fail(ps, "Unterminated quoted string");
    /* The unescaped text is never longer than the quoted one. */
    char *d = imap_alloc(ps, (size_t)span + 1);
    if (d == NULL)
        return false;
    const char *close = ps->p + span;
    size_t n = 0;
    while (ps->p < close) {
        unsigned char c = (unsigned char)*ps->p++;
        if (c == '\r' || c == '\n' || c == '\0')
            return fail(ps, "Invalid character in quoted string");
        if (c == '\\') {
            if (*ps->p != '\\' && *ps->p != '"')
                return fail(ps, "Invalid escape in quoted string");
            c = (unsigned char)*ps->p++;
        }
        /* 8-bit bytes are outside RFC 3501's TEXT-CHAR, but clients send
         * UTF-8 passwords this way: accept them, as Dovecot does. */
        d[n++] = (char)c;
    }
    ps->p++;                         /* the closing quote */
    d[n] = '\0';
    out->s = d;
    out->len = n;
    return true;
}

static bool literal(struct imap_parser *ps, struct imap_str *out)
{
    ps->p++;                         /* '{' */
    uint32_t n;
    if (!imap_number(ps, &n))
        return false;
    if (!take(ps, '}'))
        return fail(ps, "Invalid literal");
    if (!take(ps, '\r') || !take(ps, '\n'))
        return fail(ps, "Literal not at the end of a line");
    if ((size_t)(ps->end - ps->p) < n)
        return fail(ps, "Literal shorter than announced");
    if (memchr(ps->p, '\0', n) != NULL)
        return fail(ps, "NUL in literal");
    out->s = arena_strndup(ps, ps->p, n);
    out->len = n;
    ps->p += n;
    return out->s != NULL;
}

bool imap_string(struct imap_parser *ps, struct imap_str *out)
{
    if (peek(ps, '"'))
        return quoted(ps, out);
    if (peek(ps, '{'))
        return literal(ps, out);
    return fail(ps, "Missing string");
}

static bool word_of(struct imap_parser *ps, bool (*ok)(unsigned char), struct imap_str *out)
{
    const char *s = ps->p;
    while (ps->p < ps->end && ok((unsigned char)*ps->p))
        ps->p++;
    size_t n = (size_t)(ps->p - s);
    if (n == 0)
        return fail(ps, "Missing argument");
    out->s = arena_strndup(ps, s, n);
    out->len = n;
    return out->s != NULL;
}

bool imap_astring(struct imap_parser *ps, struct imap_str *out)
{
    if (peek(ps, '"') || peek(ps, '{'))
        return imap_string(ps, out);
    return word_of(ps, is_astring_char, out);
}

bool imap_list_mailbox(struct imap_parser *ps, struct imap_str *out)
{
    if (peek(ps, '"') || peek(ps, '{'))
        return imap_string(ps, out);
    return word_of(ps, is_list_char, out);
}

/* ---- sequence sets ---------------------------------------------------- */

static bool seq_number(struct imap_parser *ps, uint32_t *n)
{
    if (take(ps, '*')) {
        *n = IMAP_STAR;
        return true;
    }
    if (!imap_number(ps, n))
        return fail(ps, "Invalid sequence set");
    return *n != 0 || fail(ps, "Invalid sequence set: 0");
}

bool imap_seqset(struct imap_parser *ps, struct imap_seqset *set)
{
    /* Every range takes at least two bytes ("1,"), which bounds the count
     * by the command's length. */
    size_t cap = (size_t)(ps->end - ps->p) / 2 + 1;
    set->r = imap_alloc(ps, cap * sizeof *set->r);
    set->n = 0;
    if (set->r == NULL)
        return false;
    do {
        struct imap_range *r = &set->r[set->n];
        if (!seq_number(ps, &r->lo))
            return false;
        r->hi = r->lo;
        if (take(ps, ':') && !seq_number(ps, &r->hi))
            return false;
        set->n++;
    } while (set->n < cap && take(ps, ','));
    return true;
}

bool imap_seqset_contains(const struct imap_seqset *set, uint32_t v, uint32_t star)
{
    for (size_t i = 0; i < set->n; i++) {
        uint32_t lo = set->r[i].lo == IMAP_STAR ? star : set->r[i].lo;
        uint32_t hi = set->r[i].hi == IMAP_STAR ? star : set->r[i].hi;
        if (lo > hi) {
            uint32_t t = lo;
            lo = hi;
            hi = t;
        }
        /* "n:*" with n beyond the last number still means the last one
         * (RFC 3501 6.4.8), which this swap gives. lo is 0 only when the
         * mailbox is empty and the range is all '*'. */
        if (lo != 0 && v >= lo && v <= hi)
            return true;
    }
    return false;
}

uint32_t imap_seqset_max(const struct imap_seqset *set)
{
    uint32_t m = 0;
    for (size_t i = 0; i < set->n; i++) {
        if (set->r[i].lo > m)
            m = set->r[i].lo;
        if (set->r[i].hi > m)
            m = set->r[i].hi;
    }
    return m;
}

/* ---- flags ------------------------------------------------------------ */

static const struct {
    const char *name;
    unsigned bit;
} system_flags[] = {
    {"\\Answered", MF_ANSWERED}, {"\\Flagged", MF_FLAGGED}, {"\\Deleted", MF_DELETED},
    {"\\Seen", MF_SEEN}, {"\\Draft", MF_DRAFT},
};

static bool one_flag(struct imap_parser *ps, unsigned *flags, unsigned *keywords)
{
    bool system = take(ps, '\\');
    struct imap_str a;
    if (!word_of(ps, is_atom_char, &a))
        return fail(ps, "Invalid flag");
    if (!system) {
        (*keywords)++;
        return true;
    }
    for (size_t i = 0; i < sizeof system_flags / sizeof system_flags[0]; i++)
        if (strcasecmp(a.s, system_flags[i].name + 1) == 0) {
            *flags |= system_flags[i].bit;
            return true;
        }
    return fail(ps, "Invalid system flag");
}

bool imap_flag_list(struct imap_parser *ps, unsigned *flags, unsigned *keywords)
{
    *flags = 0;
    *keywords = 0;
    if (take(ps, '(')) {
        if (take(ps, ')'))
            return true;
        do {
            if (!one_flag(ps, flags, keywords))
                return false;
        } while (take(ps, ' '));
        return take(ps, ')') || fail(ps, "Missing ')' after flags");
    }
    do {
        if (!one_flag(ps, flags, keywords))
            return false;
    } while (take(ps, ' '));
    return true;
}

/* ---- FETCH attributes ------------------------------------------------- */

/* A fetch-att name: letters, digits and dots, upper-cased into BUF. */
static bool fetch_name(struct imap_parser *ps, char *buf, size_t size)
{
    size_t n = 0;
    while (ps->p < ps->end && (isalnum((unsigned char)*ps->p) || *ps->p == '.')) {
        if (n + 1 >= size)
            return fail(ps, "Unknown FETCH attribute");
        buf[n++] = (char)toupper((unsigned char)*ps->p++);
    }
    buf[n] = '\0';
    return n > 0 || fail(ps, "Missing FETCH attribute");
}

static bool header_list(struct imap_parser *ps, struct imap_fetch_att *a)
{
    if (!imap_sp(ps))
        return false;
    if (!take(ps, '('))
        return fail(ps, "Missing '(' before header field names");
    a->fields = imap_alloc(ps, IMAP_FIELDS_MAX * sizeof *a->fields);
    if (a->fields == NULL)
        return false;
    do {
        struct imap_str f;
        if (a->nfields == IMAP_FIELDS_MAX)
            return fail(ps, "Too many header field names");
        if (!imap_astring(ps, &f))
            return false;
        if (f.len == 0 || f.len > IMAP_FIELD_NAME_MAX)
            return fail(ps, "Invalid header field name length");
        for (size_t i = 0; i < f.len; i++) {
            unsigned char c = (unsigned char)f.s[i];
            /* RFC 5322 field names are printable ASCII without ':'. */
            if (c <= ' ' || c >= 0x7f || c == ':')
                return fail(ps, "Invalid header field name");
            ((char *)f.s)[i] = (char)toupper(c);
        }
        a->fields[a->nfields++] = f.s;
    } while (take(ps, ' '));
    return take(ps, ')') || fail(ps, "Missing ')' after header field names");
}

/* section-msgtext, or section-text after a part ("MIME" allowed). */
static bool section_text(struct imap_parser *ps, struct imap_fetch_att *a, bool after_part)
{
    if (take_word(ps, "HEADER.FIELDS.NOT")) {
        a->sec = SEC_FIELDS_NOT;
        return header_list(ps, a);
    }
    if (take_word(ps, "HEADER.FIELDS")) {
        a->sec = SEC_FIELDS;
        return header_list(ps, a);
    }
    if (take_word(ps, "HEADER")) {
        a->sec = SEC_HEADER;
        return true;
    }
    if (take_word(ps, "TEXT")) {
        a->sec = SEC_TEXT;
        return true;
    }
    if (after_part && take_word(ps, "MIME")) {
        a->sec = SEC_MIME;
        return true;
    }
    return fail(ps, "Invalid section");
}

static bool section(struct imap_parser *ps, struct imap_fetch_att *a)
{
    a->sec = SEC_ALL;
    if (take(ps, ']'))
        return true;
    if (ps->p < ps->end && isdigit((unsigned char)*ps->p)) {
        for (;;) {
            if (a->nparts == IMAP_PART_MAX)
                return fail(ps, "Section part too deep");
            uint32_t n;
            if (!imap_number(ps, &n))
                return false;
            if (n == 0)
                return fail(ps, "Invalid section part 0");
            a->part[a->nparts++] = n;
            if (!take(ps, '.'))
                break;
            if (ps->p < ps->end && isdigit((unsigned char)*ps->p))
                continue;
            if (!section_text(ps, a, true))
                return false;
            break;
        }
    } else if (!section_text(ps, a, false)) {
        return false;
    }
    return take(ps, ']') || fail(ps, "Missing ']' after section");
}

static bool partial(struct imap_parser *ps, struct imap_fetch_att *a)
{
    if (!take(ps, '<'))
        return true;
    if (!imap_number(ps, &a->off) || !take(ps, '.') || !imap_number(ps, &a->len))
        return fail(ps, "Invalid partial");
    if (a->len == 0)
        return fail(ps, "Invalid partial length 0");
    a->partial = true;
    return take(ps, '>') || fail(ps, "Invalid partial");
}

static const struct {
    const char *name;
    enum imap_fetch_kind kind;
} simple_atts[] = {
    {"FLAGS", FA_FLAGS}, {"UID", FA_UID}, {"RFC822.SIZE", FA_RFC822_SIZE},
    {"INTERNALDATE", FA_INTERNALDATE}, {"ENVELOPE", FA_ENVELOPE},
    {"BODYSTRUCTURE", FA_BODYSTRUCTURE}, {"RFC822", FA_RFC822},
    {"RFC822.HEADER", FA_RFC822_HEADER}, {"RFC822.TEXT", FA_RFC822_TEXT},
};

static struct imap_fetch_att *new_att(struct imap_parser *ps, struct imap_fetch_req *req,
                                      enum imap_fetch_kind kind)
{
    if (req->n == IMAP_FETCH_ATT_MAX) {
        fail(ps, "Too many FETCH attributes");
        return NULL;
    }
    struct imap_fetch_att *a = &req->att[req->n++];
    memset(a, 0, sizeof *a);
    a->kind = kind;
    return a;
}

static bool fetch_att(struct imap_parser *ps, struct imap_fetch_req *req)
{
    char name[24];
    if (!fetch_name(ps, name, sizeof name))
        return false;
    bool peek_ = strcmp(name, "BODY.PEEK") == 0;
    if (strcmp(name, "BODY") == 0 || peek_) {
        if (!take(ps, '[')) {
            if (peek_)
                return fail(ps, "BODY.PEEK needs a section");
            return new_att(ps, req, FA_BODY) != NULL;
        }
        struct imap_fetch_att *a = new_att(ps, req, FA_SECTION);
        if (a == NULL)
            return false;
        a->peek = peek_;
        return section(ps, a) && partial(ps, a);
    }
    for (size_t i = 0; i < sizeof simple_atts / sizeof simple_atts[0]; i++)
        if (strcmp(name, simple_atts[i].name) == 0)
            return new_att(ps, req, simple_atts[i].kind) != NULL;
    return fail(ps, "Unknown FETCH attribute");
}

static bool fetch_macro(struct imap_parser *ps, struct imap_fetch_req *req)
{
    static const enum imap_fetch_kind fast[] = {FA_FLAGS, FA_INTERNALDATE, FA_RFC822_SIZE};
    size_t n;
    bool envelope = false, body = false;
    if (take_word(ps, "FAST")) {
        n = 3;
    } else if (take_word(ps, "ALL")) {
        n = 3;
        envelope = true;
    } else if (take_word(ps, "FULL")) {
        n = 3;
        envelope = body = true;
    } else {
        return false;
    }
    for (size_t i = 0; i < n; i++)
        new_att(ps, req, fast[i]);
    if (envelope)
        new_att(ps, req, FA_ENVELOPE);
    if (body)
        new_att(ps, req, FA_BODY);
    return true;
}

bool imap_fetch_atts(struct imap_parser *ps, struct imap_fetch_req *req)
{
    req->n = 0;
    if (fetch_macro(ps, req))
        return true;
    if (!take(ps, '('))
        return fetch_att(ps, req);
    do {
        if (!fetch_att(ps, req))
            return false;
    } while (take(ps, ' '));
    return take(ps, ')') || fail(ps, "Missing ')' after FETCH attributes");
}

/* A bounded string builder for imap_fetch_att_name(). */
struct namebuf {
    char *b;
    size_t size, n;
    bool over;
};

static void put(struct namebuf *nb, const char *s)
{
    size_t l = strlen(s);
    if (nb->over || nb->n + l + 1 > nb->size) {
        nb->over = true;
        return;
    }
    memcpy(nb->b + nb->n, s, l + 1);
    nb->n += l;
}

static bool field_is_atom(const char *f)
{
    for (; *f; f++)
        if (!is_atom_char((unsigned char)*f))
            return false;
    return true;
}

static void put_field(struct namebuf *nb, const char *f)
{
    if (field_is_atom(f)) {
        put(nb, f);
        return;
    }
    put(nb, "\"");
    for (; *f; f++) {
        char e[3] = {'\\', *f, '\0'};
        put(nb, (*f == '"' || *f == '\\') ? e : e + 1);
    }
    put(nb, "\"");
}

size_t imap_fetch_att_name(const struct imap_fetch_att *a, char *buf, size_t size)
{
    static const char *const secnames[] = {
        [SEC_ALL] = "", [SEC_HEADER] = "HEADER", [SEC_TEXT] = "TEXT",
        [SEC_FIELDS] = "HEADER.FIELDS", [SEC_FIELDS_NOT] = "HEADER.FIELDS.NOT", [SEC_MIME] = "MIME",
    };
    struct namebuf nb = {.b = buf, .size = size, .over = size == 0};
    char num[32];
    if (a->kind != FA_SECTION) {
        const char *name = "BODY";
        for (size_t i = 0; i < sizeof simple_atts / sizeof simple_atts[0]; i++)
            if (simple_atts[i].kind == a->kind)
                name = simple_atts[i].name;
        put(&nb, name);
        return nb.over ? 0 : nb.n;
    }
    put(&nb, "BODY[");
    for (size_t i = 0; i < a->nparts; i++) {
        snprintf(num, sizeof num, i ? ".%u" : "%u", a->part[i]);
        put(&nb, num);
    }
    if (a->nparts > 0 && a->sec != SEC_ALL)
        put(&nb, ".");
    put(&nb, secnames[a->sec]);
    for (size_t i = 0; i < a->nfields; i++) {
        put(&nb, i == 0 ? " (" : " ");
        put_field(&nb, a->fields[i]);
    }
    if (a->nfields > 0)
        put(&nb, ")");
    put(&nb, "]");
    if (a->partial) {
        snprintf(num, sizeof num, "<%u>", a->off);
        put(&nb, num);
    }
    return nb.over ? 0 : nb.n;
}

/* ---- SEARCH ----------------------------------------------------------- */

static const char *const months[12] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

bool imap_parse_date(const char *s, time_t *day)
{
    int d = 0, nd = 0;
    while (isdigit((unsigned char)*s) && nd < 2) {
        d = d * 10 + (*s++ - '0');
        nd++;
    }
    if (nd == 0 || d < 1 || d > 31 || *s++ != '-')
        return false;
    int mon = -1;
    for (int i = 0; i < 12; i++)
        if (strncasecmp(s, months[i], 3) == 0)
            mon = i;
    if (mon < 0 || s[3] != '-')
        return false;
    s += 4;
    int y = 0;
    for (int i = 0; i < 4; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        y = y * 10 + (s[i] - '0');
    }
    if (s[4] != '\0' || y < 1900)
        return false;
    struct tm tm = {.tm_mday = d, .tm_mon = mon, .tm_year = y - 1900};
    *day = timegm(&tm);
    return true;
}

static bool search_date(struct imap_parser *ps, time_t *day)
{
    struct imap_str s;
    if (!imap_sp(ps))
        return false;
    if (peek(ps, '"') || peek(ps, '{')) {
        if (!imap_string(ps, &s))
            return false;
    } else if (!word_of(ps, is_atom_char, &s)) {
        return false;
    }
    return imap_parse_date(s.s, day) || fail(ps, "Invalid date");
}

static struct imap_search_key *new_key(struct imap_parser *ps, enum imap_skey type)
{
    struct imap_search_key *k = imap_alloc(ps, sizeof *k);
    if (k == NULL)
        return NULL;
    memset(k, 0, sizeof *k);
    k->type = type;
    return k;
}

static const struct {
    const char *name;
    enum imap_skey type;
} plain_keys[] = {
    {"ALL", SK_ALL}, {"ANSWERED", SK_ANSWERED}, {"DELETED", SK_DELETED},
    {"DRAFT", SK_DRAFT}, {"FLAGGED", SK_FLAGGED}, {"SEEN", SK_SEEN},
    {"UNANSWERED", SK_UNANSWERED}, {"UNDELETED", SK_UNDELETED}, {"UNDRAFT", SK_UNDRAFT},
    {"UNFLAGGED", SK_UNFLAGGED}, {"UNSEEN", SK_UNSEEN}, {"NEW", SK_NEW},
    {"OLD", SK_OLD}, {"RECENT", SK_RECENT},
};

static const struct {
    const char *name;
    enum imap_skey type;
} date_keys[] = {
    {"BEFORE", SK_BEFORE}, {"ON", SK_ON}, {"SINCE", SK_SINCE},
    {"SENTBEFORE", SK_SENTBEFORE}, {"SENTON", SK_SENTON}, {"SENTSINCE", SK_SENTSINCE},
};

/* FROM, TO, CC, BCC and SUBJECT are HEADER searches on that field. */
static const char *const header_keys[] = {"FROM", "TO", "CC", "BCC", "SUBJECT"};

static struct imap_search_key *search_key(struct imap_parser *ps, int depth);

static bool key_list(struct imap_parser *ps, struct imap_search_key *and, int depth, char close)
{
    struct imap_search_key **tail = &and->kids;
    for (;;) {
        struct imap_search_key *k = search_key(ps, depth);
        if (k == NULL)
            return false;
        *tail = k;
        tail = &k->next;
        if (close != 0 && take(ps, close))
            return true;
        if (close == 0 && imap_at_eol(ps))
            return true;
        if (!imap_sp(ps))
            return false;
    }
}

static struct imap_search_key *string_key(struct imap_parser *ps, enum imap_skey type,
                                          const char *field)
{
    struct imap_search_key *k = new_key(ps, type);
    if (k == NULL || !imap_sp(ps) || !imap_astring(ps, &k->str))
        return NULL;
    k->field = field;
    return k;
}

static struct imap_search_key *word_key(struct imap_parser *ps, const char *w, int depth)
{
    for (size_t i = 0; i < sizeof plain_keys / sizeof plain_keys[0]; i++)
        if (strcmp(w, plain_keys[i].name) == 0)
            return new_key(ps, plain_keys[i].type);
    for (size_t i = 0; i < sizeof date_keys / sizeof date_keys[0]; i++)
        if (strcmp(w, date_keys[i].name) == 0) {
            struct imap_search_key *k = new_key(ps, date_keys[i].type);
            return k != NULL && search_date(ps, &k->day) ? k : NULL;
        }
    for (size_t i = 0; i < sizeof header_keys / sizeof header_keys[0]; i++)
        if (strcmp(w, header_keys[i]) == 0)
            return string_key(ps, SK_HEADER, header_keys[i]);
    struct imap_search_key *k = NULL;
    if (strcmp(w, "BODY") == 0 || strcmp(w, "TEXT") == 0)
        return string_key(ps, w[0] == 'B' ? SK_BODY : SK_TEXT, NULL);
    if (strcmp(w, "HEADER") == 0) {
        struct imap_str f;
        if (!imap_sp(ps) || !imap_astring(ps, &f))
            return NULL;
        return string_key(ps, SK_HEADER, f.s);
    }
    if (strcmp(w, "KEYWORD") == 0 || strcmp(w, "UNKEYWORD") == 0) {
        struct imap_str kw;
        k = new_key(ps, w[0] == 'K' ? SK_KEYWORD : SK_UNKEYWORD);
        return k != NULL && imap_sp(ps) && word_of(ps, is_atom_char, &kw) ? k : NULL;
    }
    if (strcmp(w, "LARGER") == 0 || strcmp(w, "SMALLER") == 0) {
        uint32_t n;
        k = new_key(ps, w[0] == 'L' ? SK_LARGER : SK_SMALLER);
        if (k == NULL || !imap_sp(ps) || !imap_number(ps, &n))
            return NULL;
        k->num = n;
        return k;
    }
    if (strcmp(w, "UID") == 0) {
        k = new_key(ps, SK_UID);
        return k != NULL && imap_sp(ps) && imap_seqset(ps, &k->set) ? k : NULL;
    }
    if (strcmp(w, "NOT") == 0) {
        k = new_key(ps, SK_NOT);
        if (k == NULL || !imap_sp(ps) || (k->kids = search_key(ps, depth + 1)) == NULL)
            return NULL;
        return k;
    }
    if (strcmp(w, "OR") == 0) {
        k = new_key(ps, SK_OR);
        if (k == NULL || !imap_sp(ps) || (k->kids = search_key(ps, depth + 1)) == NULL)
            return NULL;
        if (!imap_sp(ps) || (k->kids->next = search_key(ps, depth + 1)) == NULL)
            return NULL;
        return k;
    }
    fail(ps, "Unknown search key");
    return NULL;
}

static struct imap_search_key *search_key(struct imap_parser *ps, int depth)
{
    if (depth >= IMAP_SEARCH_DEPTH) {
        fail(ps, "Search keys nested too deeply");
        return NULL;
    }
    if (ps->p < ps->end && (isdigit((unsigned char)*ps->p) || *ps->p == '*')) {
        struct imap_search_key *k = new_key(ps, SK_SEQ);
        return k != NULL && imap_seqset(ps, &k->set) ? k : NULL;
    }
    if (take(ps, '(')) {
        struct imap_search_key *k = new_key(ps, SK_AND);
        return k != NULL && key_list(ps, k, depth + 1, ')') ? k : NULL;
    }
    char w[16];
    size_t n = 0;
    while (ps->p < ps->end && isalpha((unsigned char)*ps->p) && n + 1 < sizeof w)
        w[n++] = (char)toupper((unsigned char)*ps->p++);
    w[n] = '\0';
    if (n == 0 || (ps->p < ps->end && is_atom_char((unsigned char)*ps->p))) {
        fail(ps, "Unknown search key");
        return NULL;
    }
    return word_key(ps, w, depth);
}

bool imap_search_keys(struct imap_parser *ps, struct imap_search_key **root)
{
    struct imap_search_key *and = new_key(ps, SK_AND);
    if (and == NULL)
        return false;
    if (imap_at_eol(ps))
        return fail(ps, "Missing search key");
    if (!key_list(ps, and, 0, 0))
        return false;
    *root = and;
    return true;
}

/* ---- framing ---------------------------------------------------------- */

long long imap_line_literal(const char *line, size_t len)
{
    if (len < 3 || line[len - 1] != '}')
        return -1;
    size_t i = len - 1;
    bool plus = false;
    if (line[i - 1] == '+') {
        plus = true;
        i--;
    }
    size_t digits_end = i;
    while (i > 0 && isdigit((unsigned char)line[i - 1]))
        i--;
    if (i == 0 || line[i - 1] != '{' || i == digits_end)
        return -1;
    if (plus || digits_end - i > 18)
        return -2;
    long long n = 0;
    for (; i < digits_end; i++)
        n = n * 10 + (line[i] - '0');
    return n;
}

void imap_peek_tag(const char *line, size_t len, char *tag)
{
    size_t n = 0;
    while (n < len && n < IMAP_TAG_MAX && is_astring_char((unsigned char)line[n])
           && line[n] != '+')
        n++;
    if (n == 0 || (n < len && line[n] != ' ')) {
        strcpy(tag, "*");
        return;
    }
    memcpy(tag, line, n);
    tag[n] = '\0';
}
