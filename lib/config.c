/* backupmx.conf loader.
 *
 * libconfuse builds the value tree, but on its own it is a poor judge of a
 * file: it stops at the first error, miscounts lines after comments (3.3
 * adds one or two lines per comment), accepts an unclosed '{' at the end of
 * the file and silently merges or overwrites repeated options. So loading
 * runs in three passes:
 *
 *   1. lex:   our own tokenizer, with libconfuse's token rules. It finds
 *             unterminated strings and comments, stray characters and
 *             unbalanced braces, and blanks every comment out of a copy of
 *             the text so that libconfuse's line counter stays right.
 *   2. check: a walk over the tokens against the same schema libconfuse
 *             uses. It reports every unknown option, misplaced list or
 *             section and repeated option with its real line, records the
 *             line of every section, option and list item (the "outline")
 *             and blanks each bad statement out of the copy, so that
 *             libconfuse parses what is left and the value checks still run.
 *   3. parse: libconfuse on the blanked copy, then conversion into plain
 *             structs, where values and cross-references are checked and
 *             reported with lines from the outline.
 *
 * Every option is a string in the libconfuse schema: numbers, booleans,
 * durations and sizes are converted here, so that all value errors are ours
 * (all reported, with the right line) rather than libconfuse's (first only).
 *
 * Not thread-safe: libconfuse's lexer is a global flex scanner anyway. */
#include "config.h"
#include "units.h"

#include <confuse.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Defaults and schema
 */

#define DEF_SPOOL "/var/spool/backupmx"
static const char *const def_listen[] = { "0.0.0.0:25", "[::]:25", NULL };

static cfg_opt_t tls_opts[] = {
    CFG_STR("cert", NULL, CFGF_NONE),
    CFG_STR("key", NULL, CFGF_NONE),
    CFG_STR("ciphers", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t limits_opts[] = {
    CFG_STR("message_size", NULL, CFGF_NONE),
    CFG_STR("recipients", NULL, CFGF_NONE),
    CFG_STR("connections", NULL, CFGF_NONE),
    CFG_STR("connections_per_ip", NULL, CFGF_NONE),
    CFG_STR("command_timeout", NULL, CFGF_NONE),
    CFG_STR("data_timeout", NULL, CFGF_NONE),
    CFG_STR("errors", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t queue_opts[] = {
    CFG_STR("lifetime", NULL, CFGF_NONE),
    CFG_STR("retry_min", NULL, CFGF_NONE),
    CFG_STR("retry_max", NULL, CFGF_NONE),
    CFG_STR("delay_warning", NULL, CFGF_NONE),
    CFG_STR("concurrency", NULL, CFGF_NONE),
    CFG_STR("mx_port", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t domain_opts[] = {
    CFG_STR("mode", NULL, CFGF_NONE),
    CFG_STR_LIST("primary", NULL, CFGF_NONE),
    CFG_STR("recipients", NULL, CFGF_NONE),
    CFG_STR("verify", NULL, CFGF_NONE),
    CFG_STR("verify_ttl", NULL, CFGF_NONE),
    CFG_STR("unverified", NULL, CFGF_NONE),
    CFG_STR("tls", NULL, CFGF_NONE),
    CFG_STR("fingerprint", NULL, CFGF_NONE),
    CFG_STR("lifetime", NULL, CFGF_NONE),
    CFG_STR("subdomains", NULL, CFGF_NONE),
    CFG_STR("mailbox", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t mailbox_opts[] = {
    CFG_STR("password", NULL, CFGF_NONE),
    CFG_STR("maildir", NULL, CFGF_NONE),
    CFG_STR("quota", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t listener_opts[] = {
    CFG_STR_LIST("listen", NULL, CFGF_NONE),
    CFG_STR("tls", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t etrn_opts[] = {
    CFG_STR_LIST("allow", NULL, CFGF_NONE),
    CFG_END()
};

/* No title-dupes flag on domain/mailbox: duplicates are found (case- and
 * trailing-dot-insensitively) and dropped by the check pass, which also
 * keeps libconfuse's section order equal to the outline's. */
static cfg_opt_t top_opts[] = {
    CFG_STR("hostname", NULL, CFGF_NONE),
    CFG_STR("spool", NULL, CFGF_NONE),
    CFG_STR("user", NULL, CFGF_NONE),
    CFG_STR_LIST("listen", NULL, CFGF_NONE),
    CFG_STR_LIST("resolver", NULL, CFGF_NONE),
    CFG_STR("control", NULL, CFGF_NONE),
    CFG_SEC("tls", tls_opts, CFGF_NONE),
    CFG_SEC("limits", limits_opts, CFGF_NONE),
    CFG_SEC("queue", queue_opts, CFGF_NONE),
    CFG_SEC("domain", domain_opts, CFGF_MULTI | CFGF_TITLE),
    CFG_SEC("mailbox", mailbox_opts, CFGF_MULTI | CFGF_TITLE),
    CFG_SEC("pop3", listener_opts, CFGF_NONE),
    CFG_SEC("imap", listener_opts, CFGF_NONE),
    CFG_SEC("etrn", etrn_opts, CFGF_NONE),
    CFG_END()
};

/* ------------------------------------------------------------------------
 * Memory: config loading happens once at startup, where running out of
 * memory leaves nothing sensible to do but stop.
 */

static _Noreturn void out_of_memory(void)
{
    fputs("backupmx: out of memory while loading the configuration\n", stderr);
    abort();
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (p == NULL)
        out_of_memory();
    return p;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (p == NULL)
        out_of_memory();
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *d = xrealloc(NULL, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *xstrdup(const char *s)
{
    return s ? xstrndup(s, strlen(s)) : NULL;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        out_of_memory();
    return s;
}

/* Grows *v (of *cap elements of size sz) so that it holds at least n+1. */
static void grow(void **v, size_t *cap, size_t n, size_t sz)
{
    if (n < *cap)
        return;
    while (n >= *cap)
        *cap = *cap ? *cap * 2 : 16;
    *v = xrealloc(*v, *cap * sz);
}

/* ------------------------------------------------------------------------
 * Loader state and problem reports
 */

enum tok_type { T_EOF, T_STR, T_LBRACE, T_RBRACE, T_LPAREN, T_RPAREN, T_EQ, T_PLUSEQ, T_COMMA };

struct token {
    enum tok_type type;
    int line;
    size_t start, end;          /* byte range in the source */
    char *text;                 /* T_STR: the value, unquoted and unescaped */
};

/* One section or option statement as it appears in the file. */
struct entry {
    int parent;                 /* enclosing section's entry, ENT_TOP */
    const cfg_opt_t *opt;
    const char *title;          /* section title (token text) */
    int line;
    int *item_line;             /* line of each value, in libconfuse's order */
    size_t nitems;
};

#define ENT_TOP (-1)            /* the top level of the file */
#define ENT_NONE (-2)           /* a section that is not in the file */

struct problem {
    int line;
    size_t seq;                 /* report order, to keep the sort stable */
    char *msg;
};

struct loader {
    const char *file;
    char *src;                  /* the file, NUL-terminated */
    char *buf;                  /* copy handed to libconfuse, with blanks */
    size_t len;
    bool lex_failed;

    struct token *tok;
    size_t ntok, captok;
    struct entry *ent;
    size_t nent, capent;
    struct problem *prob;
    size_t nprob, capprob;
};

static void vreport(struct loader *L, int line, const char *fmt, va_list ap)
{
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = xstrdup("out of memory");
    grow((void **)&L->prob, &L->capprob, L->nprob, sizeof *L->prob);
    L->prob[L->nprob] = (struct problem){ line, L->nprob, msg };
    L->nprob++;
}

static void report(struct loader *L, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(struct loader *L, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(L, line, fmt, ap);
    va_end(ap);
}

static int problem_cmp(const void *a, const void *b)
{
    const struct problem *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorted by line: an operator fixes a file top to bottom. */
static void print_problems(struct loader *L, FILE *errs)
{
    qsort(L->prob, L->nprob, sizeof *L->prob, problem_cmp);
    for (size_t i = 0; errs != NULL && i < L->nprob; i++)
        fprintf(errs, "%s:%d: %s\n", L->file, L->prob[i].line, L->prob[i].msg);
    if (errs != NULL)
        fflush(errs);
}

static void loader_free(struct loader *L)
{
    for (size_t i = 0; i < L->ntok; i++)
        free(L->tok[i].text);
    for (size_t i = 0; i < L->nent; i++)
        free(L->ent[i].item_line);
    for (size_t i = 0; i < L->nprob; i++)
        free(L->prob[i].msg);
    free(L->tok);
    free(L->ent);
    free(L->prob);
    free(L->src);
    free(L->buf);
}

/* ------------------------------------------------------------------------
 * Reading the file
 */

static int read_file(struct loader *L)
{
    FILE *fp = fopen(L->file, "r");
    if (fp == NULL) {
        report(L, 0, "cannot open: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && !S_ISREG(st.st_mode)) {
        report(L, 0, "cannot read: not a regular file");
        fclose(fp);
        return -1;
    }
    size_t cap = 0;
    for (;;) {
        grow((void **)&L->src, &cap, L->len + 4096, 1);
        size_t n = fread(L->src + L->len, 1, cap - L->len - 1, fp);
        L->len += n;
        if (n == 0)
            break;
    }
    int err = ferror(fp) ? errno : 0;
    fclose(fp);
    if (err != 0) {
        report(L, 0, "cannot read: %s", strerror(err));
        return -1;
    }
    L->src[L->len] = '\0';
    L->buf = xstrndup(L->src, L->len);
    return 0;
}

/* libconfuse reads the text as a C string and would stop at a NUL byte. */
static void check_nul(struct loader *L)
{
    const char *nul = memchr(L->src, '\0', L->len);
    if (nul == NULL)
        return;
    int line = 1;
    for (const char *p = L->src; p < nul; p++)
        line += *p == '\n';
    report(L, line, "the file contains a NUL byte");
    L->lex_failed = true;
}

/* ------------------------------------------------------------------------
 * Pass 1: lexer, following libconfuse 3.3's token rules.
 */

/* Replaces a range of the libconfuse copy with spaces, keeping newlines so
 * that every later line keeps its number. */
static void blank(struct loader *L, size_t from, size_t to)
{
    for (size_t i = from; i < to && i < L->len; i++)
        if (L->buf[i] != '\n')
            L->buf[i] = ' ';
}

static void add_token(struct loader *L, enum tok_type type, int line,
                      size_t start, size_t end, char *text)
{
    grow((void **)&L->tok, &L->captok, L->ntok, sizeof *L->tok);
    L->tok[L->ntok++] = (struct token){ type, line, start, end, text };
}

/* Characters of an unquoted string (libconfuse's rule). */
static bool is_bare(int c)
{
    /* libconfuse would take control characters into a value too; they are
     * never meant, so they are reported instead. */
    if (iscntrl(c))
        return false;
    return strchr(" #\"'={}()+,*", c) == NULL;
}

static enum tok_type punct_type(int c)
{
    switch (c) {
    case '{': return T_LBRACE;
    case '}': return T_RBRACE;
    case '(': return T_LPAREN;
    case ')': return T_RPAREN;
    case '=': return T_EQ;
    case ',': return T_COMMA;
    default: return T_EOF;
    }
}

static size_t skip_line_comment(struct loader *L, size_t i)
{
    size_t j = i;
    while (j < L->len && L->src[j] != '\n')
        j++;
    blank(L, i, j);
    return j;
}

static size_t skip_block_comment(struct loader *L, size_t i, int *line)
{
    int open_line = *line;
    const char *end = strstr(L->src + i + 2, "*/");
    size_t j = end ? (size_t)(end - L->src) + 2 : L->len;
    for (size_t k = i; k < j; k++)
        *line += L->src[k] == '\n';
    blank(L, i, j);
    if (end == NULL) {
        report(L, open_line, "unterminated comment: '/*' without '*/'");
        L->lex_failed = true;
    }
    return j;
}

struct sbuf {
    char *s;
    size_t n, cap;
};

static void sb_putc(struct sbuf *b, char c)
{
    grow((void **)&b->s, &b->cap, b->n + 1, 1);
    b->s[b->n++] = c;
    b->s[b->n] = '\0';
}

/* A backslash sequence in a "double-quoted" string, at s[j] == '\\'.
 * Returns the index after it. */
static size_t unescape_dq(const char *s, size_t j, struct sbuf *b, int *line)
{
    static const char from[] = "nrbfaetv", to[] = "\n\r\b\f\a\033\t\v";
    char c = s[j + 1];
    if (c == '\n') {            /* line continuation */
        (*line)++;
        return j + 2;
    }
    const char *p = c ? strchr(from, c) : NULL;
    if (p != NULL) {
        sb_putc(b, to[p - from]);
        return j + 2;
    }
    if (c >= '0' && c <= '7') {
        unsigned v = 0;
        size_t k = j + 1;
        while (k < j + 4 && s[k] >= '0' && s[k] <= '7')
            v = v * 8 + (unsigned)(s[k++] - '0');
        sb_putc(b, (char)v);
        return k;
    }
    if (c == 'x' && isxdigit((unsigned char)s[j + 2])) {
        unsigned v = 0;
        size_t k = j + 2;
        while (k < j + 4 && isxdigit((unsigned char)s[k])) {
            int d = (unsigned char)s[k++];
            v = v * 16 + (unsigned)(isdigit(d) ? d - '0' : tolower(d) - 'a' + 10);
        }
        sb_putc(b, (char)v);
        return k;
    }
    if (c == '\0')
        return j + 1;
    sb_putc(b, c);
    return j + 2;
}

/* In 'single quotes' only \\ and \' are escapes. */
static size_t unescape_sq(const char *s, size_t j, struct sbuf *b, int *line)
{
    char c = s[j + 1];
    if (c == '\n') {
        (*line)++;
        return j + 2;
    }
    if (c == '\\' || c == '\'') {
        sb_putc(b, c);
        return j + 2;
    }
    sb_putc(b, '\\');
    return j + 1;
}

/* A quoted string. libconfuse allows raw newlines inside quotes, but no
 * value here can contain one, and stopping at the end of the line points at
 * the missing quote instead of at wherever the next quote happens to be. */
static size_t lex_quoted(struct loader *L, size_t i, int *line)
{
    const char *s = L->src;
    char q = s[i];
    int open_line = *line;
    struct sbuf b = { xstrdup(""), 0, 1 };
    size_t j = i + 1;
    while (j < L->len && s[j] != q && s[j] != '\n') {
        if (s[j] == '\\')
            j = q == '"' ? unescape_dq(s, j, &b, line) : unescape_sq(s, j, &b, line);
        else
            sb_putc(&b, s[j++]);
    }
    add_token(L, T_STR, open_line, i, j < L->len ? j + 1 : j, b.s);
    if (j < L->len && s[j] == q)
        return j + 1;
    report(L, open_line, "unterminated string: missing closing %c", q);
    L->lex_failed = true;
    return j;
}

/* ${VAR} outside quotes is an environment substitution in libconfuse. */
static size_t lex_env(struct loader *L, size_t i, int line)
{
    const char *end = strchr(L->src + i, '}');
    size_t j = end ? (size_t)(end - L->src) + 1 : L->len;
    add_token(L, T_STR, line, i, j, xstrndup(L->src + i, j - i));
    return j;
}

static void bad_char(struct loader *L, int line, int c)
{
    if (isprint(c))
        report(L, line, "unexpected character '%c'", c);
    else
        report(L, line, "unexpected character \\x%02x", (unsigned)c);
    L->lex_failed = true;
}

/* Returns the index after whatever starts at s[i]. */
static size_t lex_one(struct loader *L, size_t i, int *line)
{
    const char *s = L->src;
    unsigned char c = (unsigned char)s[i];
    if (c == '\n') {
        (*line)++;
        return i + 1;
    }
    if (c == ' ' || c == '\t' || c == '\r' || c == '\0')    /* NUL: see check_nul() */
        return i + 1;
    /* libconfuse 3.3 treats '//' at the start of a token as a comment,
     * inside one (a//b) as part of it. */
    if (c == '#' || (c == '/' && s[i + 1] == '/'))
        return skip_line_comment(L, i);
    if (c == '/' && s[i + 1] == '*')
        return skip_block_comment(L, i, line);
    if (c == '"' || c == '\'')
        return lex_quoted(L, i, line);
    if (c == '+' && s[i + 1] == '=') {
        add_token(L, T_PLUSEQ, *line, i, i + 2, NULL);
        return i + 2;
    }
    if (c == '$' && s[i + 1] == '{')
        return lex_env(L, i, *line);
    enum tok_type t = punct_type(c);
    if (t != T_EOF) {
        add_token(L, t, *line, i, i + 1, NULL);
        return i + 1;
    }
    size_t n = 0;
    while (is_bare((unsigned char)s[i + n]))
        n++;
    if (n == 0) {
        bad_char(L, *line, c);
        return i + 1;
    }
    add_token(L, T_STR, *line, i, i + n, xstrndup(s + i, n));
    return i + n;
}

static void lex(struct loader *L)
{
    int line = 1;
    size_t i = 0;
    while (i < L->len)
        i = lex_one(L, i, &line);
    add_token(L, T_EOF, line, L->len, L->len, NULL);
}

/* libconfuse accepts a '{' still open at the end of the file, and a '}'
 * missing mid-file only shows up later as a confusing unknown option. */
static void check_braces(struct loader *L)
{
    int *open = NULL;
    size_t nopen = 0, cap = 0;
    for (size_t i = 0; i < L->ntok; i++) {
        if (L->tok[i].type == T_LBRACE) {
            grow((void **)&open, &cap, nopen, sizeof *open);
            open[nopen++] = L->tok[i].line;
        } else if (L->tok[i].type == T_RBRACE && nopen > 0) {
            nopen--;
        } else if (L->tok[i].type == T_RBRACE) {
            report(L, L->tok[i].line, "unexpected '}' without a matching '{'");
            L->lex_failed = true;
        }
    }
    for (size_t i = 0; i < nopen; i++)
        report(L, open[i], "unclosed '{' opened here (missing '}')");
    if (nopen > 0)
        L->lex_failed = true;
    free(open);
}

/* ------------------------------------------------------------------------
 * Pass 2: statements against the schema, building the outline.
 */

static const char *tok_desc(const struct token *t)
{
    static const char *const names[] = {
        [T_EOF] = "end of file", [T_STR] = "value", [T_LBRACE] = "'{'",
        [T_RBRACE] = "'}'", [T_LPAREN] = "'('", [T_RPAREN] = "')'",
        [T_EQ] = "'='", [T_PLUSEQ] = "'+='", [T_COMMA] = "','",
    };
    return names[t->type];
}

static bool is_section(const cfg_opt_t *o) { return o->type == CFGT_SEC; }
static bool is_list(const cfg_opt_t *o) { return (o->flags & CFGF_LIST) != 0; }
static bool has_title(const cfg_opt_t *o) { return (o->flags & CFGF_TITLE) != 0; }

static const cfg_opt_t *schema_find(const cfg_opt_t *schema, const char *name)
{
    for (const cfg_opt_t *o = schema; o->name != NULL; o++)
        if (strcmp(o->name, name) == 0)
            return o;
    return NULL;
}

/* Edit distance, to suggest the option a typo was meant to be. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return SIZE_MAX;
    size_t d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    }
    return d[la][lb];
}

static const char *suggest(const cfg_opt_t *schema, const char *name)
{
    const char *best = NULL;
    size_t bestd = 3;           /* more than two edits is not a typo */
    for (const cfg_opt_t *o = schema; o->name != NULL; o++) {
        size_t d = distance(name, o->name);
        if (d < bestd && d < strlen(o->name)) {
            bestd = d;
            best = o->name;
        }
    }
    return best;
}

/* "domain \"x\"" or "queue": how messages name a section. */
static char *section_desc(const struct loader *L, int ent)
{
    if (ent < 0)
        return xstrdup("");
    const struct entry *e = &L->ent[ent];
    if (e->title != NULL)
        return xasprintf("%s \"%s\"", e->opt->name, e->title);
    return xstrdup(e->opt->name);
}

/* Drops statement tokens [from, to) from what libconfuse will see. */
static void drop(struct loader *L, size_t from, size_t to)
{
    if (to > from)
        blank(L, L->tok[from].start, L->tok[to - 1].end);
}

/* Index after the '}' matching the '{' at p. */
static size_t skip_block(const struct loader *L, size_t p)
{
    int depth = 0;
    for (; L->tok[p].type != T_EOF; p++) {
        if (L->tok[p].type == T_LBRACE)
            depth++;
        if (L->tok[p].type == T_RBRACE && --depth == 0)
            return p + 1;
    }
    return p;
}

static size_t skip_value(const struct loader *L, size_t p)
{
    if (L->tok[p].type == T_LBRACE)
        return skip_block(L, p);
    if (L->tok[p].type == T_LPAREN) {
        while (L->tok[p].type != T_EOF && L->tok[p].type != T_RPAREN)
            p++;
        return L->tok[p].type == T_RPAREN ? p + 1 : p;
    }
    return L->tok[p].type == T_STR ? p + 1 : p;
}

/* The extent of a statement that cannot be used, starting at its name:
 * NAME = value, NAME += value, NAME [words on the same line] { ... }. */
static size_t skip_statement(const struct loader *L, size_t p)
{
    size_t q = p + 1;
    if (L->tok[q].type == T_EQ || L->tok[q].type == T_PLUSEQ)
        return skip_value(L, q + 1);
    if (L->tok[q].type == T_LPAREN)
        return skip_value(L, q);
    while (L->tok[q].type == T_STR && L->tok[q].line == L->tok[p].line
           && L->tok[q + 1].type != T_EQ && L->tok[q + 1].type != T_PLUSEQ)
        q++;
    if (L->tok[q].type == T_LBRACE)
        return skip_block(L, q);
    return p + 1;
}

static int add_entry(struct loader *L, int parent, const cfg_opt_t *opt,
                     const char *title, int line)
{
    grow((void **)&L->ent, &L->capent, L->nent, sizeof *L->ent);
    L->ent[L->nent] = (struct entry){ parent, opt, title, line, NULL, 0 };
    return (int)L->nent++;
}

static void add_item(struct entry *e, int line)
{
    e->item_line = xrealloc(e->item_line, (e->nitems + 1) * sizeof *e->item_line);
    e->item_line[e->nitems++] = line;
}

static int ent_nth(const struct loader *L, int parent, const char *name, size_t k)
{
    if (parent == ENT_NONE)
        return ENT_NONE;
    for (size_t i = 0; i < L->nent; i++)
        if (L->ent[i].parent == parent && strcmp(L->ent[i].opt->name, name) == 0 && k-- == 0)
            return (int)i;
    return ENT_NONE;
}

static int ent_find(const struct loader *L, int parent, const char *name)
{
    return ent_nth(L, parent, name, 0);
}

/* Domain titles compare like domain names: case and one trailing dot do not
 * matter. Mailbox names are login names: case does not matter either. */
static bool same_title(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 0 && a[la - 1] == '.')
        la--;
    if (lb > 0 && b[lb - 1] == '.')
        lb--;
    return la == lb && strncasecmp(a, b, la) == 0;
}

static int find_duplicate(const struct loader *L, int parent, const cfg_opt_t *opt,
                          const char *title)
{
    for (size_t k = 0;; k++) {
        int i = ent_nth(L, parent, opt->name, k);
        if (i < 0)
            return ENT_NONE;
        if (title == NULL || same_title(L->ent[i].title, title))
            return i;
    }
}

static void report_unknown(struct loader *L, const struct token *t,
                           const cfg_opt_t *schema, int parent)
{
    char *where = section_desc(L, parent);
    const char *hint = suggest(schema, t->text);
    char *extra = NULL;
    if (hint != NULL)
        extra = xasprintf(" (did you mean '%s'?)", hint);
    else if (parent >= 0 && schema_find(top_opts, t->text) != NULL)
        extra = xasprintf(" (is a '}' missing before it?)");
    report(L, t->line, "unknown option '%s'%s%s%s", t->text,
           *where ? " in " : "", where, extra ? extra : "");
    free(extra);
    free(where);
}

static size_t check_block(struct loader *L, size_t p, const cfg_opt_t *schema, int parent);

static size_t check_section(struct loader *L, size_t p, const cfg_opt_t *opt, int parent)
{
    const struct token *name = &L->tok[p];
    size_t q = p + 1;
    const char *title = NULL;
    if (has_title(opt) && L->tok[q].type == T_STR)
        title = L->tok[q++].text;
    if (L->tok[q].type != T_LBRACE || (has_title(opt) && title == NULL)) {
        if (has_title(opt))
            report(L, name->line, "'%s' is a section: write %s \"NAME\" { ... }",
                   opt->name, opt->name);
        else if (L->tok[q].type == T_STR && L->tok[q + 1].type == T_LBRACE)
            report(L, name->line, "section '%s' takes no name", opt->name);
        else
            report(L, name->line, "'%s' is a section: write %s { ... }", opt->name, opt->name);
        size_t end = skip_statement(L, p);
        drop(L, p, end);
        return end;
    }
    int dup = find_duplicate(L, parent, opt, title);
    if (dup >= 0) {
        if (title != NULL)
            report(L, name->line, "duplicate %s \"%s\" (already defined on line %d)",
                   opt->name, title, L->ent[dup].line);
        else
            report(L, name->line, "section '%s' given twice (first on line %d)",
                   opt->name, L->ent[dup].line);
        size_t end = skip_block(L, q);
        drop(L, p, end);
        return end;
    }
    int idx = add_entry(L, parent, opt, title, name->line);
    return check_block(L, q + 1, opt->subopts, idx);
}

/* A list value at p == '{'. Returns the index after the '}', or 0 after
 * reporting a problem. */
static size_t check_list(struct loader *L, size_t p, const cfg_opt_t *opt, int *lines,
                         size_t *nlines)
{
    size_t q = p + 1;
    if (L->tok[q].type == T_RBRACE)
        return q + 1;
    for (;;) {
        const struct token *t = &L->tok[q];
        if (t->type != T_STR) {
            report(L, t->line, "expected a value in the list for '%s', found %s",
                   opt->name, tok_desc(t));
            return 0;
        }
        lines[(*nlines)++] = t->line;
        q++;
        if (L->tok[q].type == T_COMMA && L->tok[q + 1].type == T_RBRACE)
            return q + 2;
        if (L->tok[q].type == T_RBRACE)
            return q + 1;
        if (L->tok[q].type != T_COMMA) {
            report(L, L->tok[q].line, "missing ',' between the values of '%s'", opt->name);
            return 0;
        }
        q++;
    }
}

/* NAME = value | NAME = { list } | NAME += ... */
static size_t check_value(struct loader *L, size_t p, const cfg_opt_t *opt, int parent)
{
    const struct token *name = &L->tok[p], *op = &L->tok[p + 1];
    size_t q = p + 2, end;
    if (op->type != T_EQ && op->type != T_PLUSEQ) {
        report(L, name->line, "missing '=' after '%s'", opt->name);
        end = p + 1;
        /* "spool /x": the value is there, only the '=' is not. */
        if (op->type == T_STR && op->line == name->line
            && op[1].type != T_EQ && op[1].type != T_PLUSEQ)
            end++;
        else if (op->type == T_LBRACE)
            end = skip_block(L, p + 1);
        drop(L, p, end);
        return end;
    }
    int prev = ent_find(L, parent, opt->name);
    if (op->type == T_PLUSEQ && !is_list(opt)) {
        report(L, name->line, "'%s' takes one value: '+=' only adds to lists", opt->name);
        end = skip_value(L, q);
        drop(L, p, end);
        return end;
    }
    if (op->type == T_EQ && prev >= 0) {
        report(L, name->line, "'%s' is set twice (first on line %d)",
               opt->name, L->ent[prev].line);
        end = skip_value(L, q);
        drop(L, p, end);
        return end;
    }
    const struct token *v = &L->tok[q];
    /* "a =" followed by "b = ...": a missing value, not a = "b". */
    bool missing = v->type != T_STR && v->type != T_LBRACE;
    if (v->type == T_STR && (v[1].type == T_EQ || v[1].type == T_PLUSEQ)
        && v->line != name->line)
        missing = true;
    if (missing) {
        report(L, op->line, "missing value after '%s %s'", opt->name,
               op->type == T_EQ ? "=" : "+=");
        drop(L, p, q);
        return q;
    }
    if (v->type == T_LBRACE && !is_list(opt)) {
        report(L, v->line, "'%s' takes one value, not a list", opt->name);
        end = skip_block(L, q);
        drop(L, p, end);
        return end;
    }
    size_t nlines = 0;
    int *lines = xrealloc(NULL, (skip_value(L, q) - q + 1) * sizeof *lines);
    if (v->type == T_STR) {
        lines[nlines++] = v->line;
        end = q + 1;
    } else if ((end = check_list(L, q, opt, lines, &nlines)) == 0) {
        end = skip_block(L, q);
        drop(L, p, end);
        free(lines);
        return end;
    }
    int idx = prev >= 0 ? prev : add_entry(L, parent, opt, NULL, name->line);
    for (size_t i = 0; i < nlines; i++)
        add_item(&L->ent[idx], lines[i]);
    free(lines);
    return end;
}

static size_t check_statement(struct loader *L, size_t p, const cfg_opt_t *schema, int parent)
{
    const struct token *t = &L->tok[p];
    const cfg_opt_t *opt = schema_find(schema, t->text);
    if (opt == NULL) {
        report_unknown(L, t, schema, parent);
        size_t end = skip_statement(L, p);
        drop(L, p, end);
        return end;
    }
    if (is_section(opt))
        return check_section(L, p, opt, parent);
    return check_value(L, p, opt, parent);
}

/* The statements of one block, up to and including its '}' (or the end of
 * the file at the top level). */
static size_t check_block(struct loader *L, size_t p, const cfg_opt_t *schema, int parent)
{
    for (;;) {
        const struct token *t = &L->tok[p];
        if (t->type == T_EOF)
            return p;
        if (t->type == T_RBRACE)
            return p + 1;
        if (t->type == T_STR) {
            p = check_statement(L, p, schema, parent);
            continue;
        }
        report(L, t->line, "unexpected %s where an option name should be", tok_desc(t));
        size_t end = t->type == T_LBRACE ? skip_block(L, p) : p + 1;
        drop(L, p, end);
        p = end;
    }
}

/* ------------------------------------------------------------------------
 * Pass 3: libconfuse
 */

/* libconfuse's error callback has no user pointer; the loader in progress
 * is kept here (loading is single-threaded, as is libconfuse's lexer). */
static struct loader *current_loader;

static void confuse_error(cfg_t *cfg, const char *fmt, va_list ap)
{
    /* With comments blanked out, cfg->line (of the section being parsed)
     * is the real line. */
    vreport(current_loader, cfg ? cfg->line : 0, fmt, ap);
}

static cfg_t *confuse_parse(struct loader *L)
{
    cfg_t *cfg = cfg_init(top_opts, CFGF_NONE);
    if (cfg == NULL) {
        report(L, 0, "cannot initialise the parser");
        return NULL;
    }
    cfg_set_error_function(cfg, confuse_error);
    current_loader = L;
    int rc = cfg_parse_buf(cfg, L->buf);
    current_loader = NULL;
    if (rc == CFG_SUCCESS)
        return cfg;
    if (L->nprob == 0)
        report(L, 0, "cannot parse the file");
    cfg_free(cfg);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Value conversion. A "sec" is one section seen both ways: libconfuse's
 * values and the outline's lines.
 */

struct sec {
    struct loader *L;
    cfg_t *cfg;
    int ent;                    /* outline entry, ENT_TOP or ENT_NONE */
    char *desc;                 /* "", "queue", "domain \"x\"" */
};

static struct sec sec_open(struct loader *L, cfg_t *cfg, int ent)
{
    return (struct sec){ L, cfg, ent, section_desc(L, ent) };
}

static void sec_close(struct sec *s)
{
    free(s->desc);
}

static int sec_line(const struct sec *s)
{
    return s->ent >= 0 ? s->L->ent[s->ent].line : 0;
}

/* Where option NAME is set, or else where its section starts. */
static int opt_line(const struct sec *s, const char *name)
{
    int i = ent_find(s->L, s->ent, name);
    return i >= 0 ? s->L->ent[i].line : sec_line(s);
}

static int item_line(const struct sec *s, const char *name, size_t k)
{
    int i = ent_find(s->L, s->ent, name);
    if (i >= 0 && k < s->L->ent[i].nitems)
        return s->L->ent[i].item_line[k];
    return opt_line(s, name);
}

static bool opt_given(const struct sec *s, const char *name)
{
    return ent_find(s->L, s->ent, name) >= 0;
}

/* Reports "SECTION: NAME: message" at LINE. */
static void opt_error(const struct sec *s, const char *name, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void opt_error(const struct sec *s, const char *name, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    report(s->L, line, "%s%s%s: %s", s->desc, *s->desc ? ": " : "",
           name, msg ? msg : "out of memory");
    free(msg);
}

static const char *raw(const struct sec *s, const char *name, const char *def)
{
    const char *v = cfg_getstr(s->cfg, name);
    return v != NULL ? v : def;
}

static char *get_str(const struct sec *s, const char *name, const char *def)
{
    const char *v = raw(s, name, def);
    if (v != NULL && *v == '\0') {
        opt_error(s, name, opt_line(s, name), "must not be empty");
        return NULL;
    }
    return xstrdup(v);
}

/* Each getter reports a bad value and returns false; the default is used. */
static bool get_duration(const struct sec *s, const char *name, const char *def, int64_t *out)
{
    const char *v = raw(s, name, def);
    if (parse_duration(v, out) == 0)
        return true;
    opt_error(s, name, opt_line(s, name),
              "invalid duration '%s' (a whole number with an optional unit "
              "s, m, h or d, e.g. 90, 30s, 5m, 1h, 10d)", v);
    parse_duration(def, out);
    return false;
}

static int64_t get_positive_duration(const struct sec *s, const char *name, const char *def)
{
    int64_t d;
    if (get_duration(s, name, def, &d) && d == 0) {
        opt_error(s, name, opt_line(s, name), "must be longer than 0");
        parse_duration(def, &d);
    }
    return d;
}

static bool get_size(const struct sec *s, const char *name, const char *def, uint64_t *out)
{
    const char *v = raw(s, name, def);
    if (parse_size(v, out) == 0)
        return true;
    opt_error(s, name, opt_line(s, name),
              "invalid size '%s' (a whole number of bytes with an optional "
              "unit k, M or G, e.g. 65536, 64k, 50M, 5G)", v);
    parse_size(def, out);
    return false;
}

static long get_long(const struct sec *s, const char *name, long def, long min, long max)
{
    const char *v = cfg_getstr(s->cfg, name);
    if (v == NULL)
        return def;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (!isdigit((unsigned char)*v) || *end != '\0' || errno != 0) {
        opt_error(s, name, opt_line(s, name), "expected a whole number, got '%s'", v);
        return def;
    }
    if (n < min || n > max) {
        opt_error(s, name, opt_line(s, name), "%ld is out of range (%ld to %ld)", n, min, max);
        return def;
    }
    return n;
}

static bool get_bool(const struct sec *s, const char *name, bool def)
{
    const char *v = cfg_getstr(s->cfg, name);
    if (v == NULL)
        return def;
    static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return true;
        if (strcasecmp(v, no[i]) == 0)
            return false;
    }
    opt_error(s, name, opt_line(s, name), "expected true or false, got '%s'", v);
    return def;
}

/* Index of the value in NAMES (NULL-terminated), or DEF. */
static int get_enum(const struct sec *s, const char *name, const char *const *names, int def)
{
    const char *v = cfg_getstr(s->cfg, name);
    if (v == NULL)
        return def;
    for (int i = 0; names[i] != NULL; i++)
        if (strcasecmp(v, names[i]) == 0)
            return i;
    char choices[128] = "";
    for (int i = 0; names[i] != NULL; i++) {
        strncat(choices, i ? ", " : "", sizeof choices - strlen(choices) - 1);
        strncat(choices, names[i], sizeof choices - strlen(choices) - 1);
    }
    opt_error(s, name, opt_line(s, name), "must be one of %s, not '%s'", choices, v);
    return def;
}

static void strlist_add(struct strlist *l, const char *v)
{
    l->v = xrealloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = xstrdup(v);
}

static void strlist_free(struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* The list's values, or DEFS when the option is not in the file. */
static void get_list(const struct sec *s, const char *name, const char *const *defs,
                     struct strlist *out)
{
    unsigned n = cfg_size(s->cfg, name);
    for (unsigned i = 0; i < n; i++)
        strlist_add(out, cfg_getnstr(s->cfg, name, i));
    for (size_t i = 0; n == 0 && !opt_given(s, name) && defs && defs[i]; i++)
        strlist_add(out, defs[i]);
}

/* ------------------------------------------------------------------------
 * Syntax of names and addresses
 */

/* Letters, digits and hyphens in dot-separated labels of 1-63 characters,
 * at most 253 in all; NAME is already without its trailing dot. */
static bool valid_domain(const char *name)
{
    size_t len = strlen(name), label = 0;
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || label > 63 || name[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!isalnum(c) && c != '-')
            return false;
        if (label == 0 && c == '-')
            return false;
        label++;
    }
    return true;
}

/* Lower case without one trailing dot: how domains are stored and compared. */
static char *normalize_domain(const char *name)
{
    char *d = xstrdup(name);
    size_t n = strlen(d);
    if (n > 0 && d[n - 1] == '.')
        d[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        d[i] = (char)tolower((unsigned char)d[i]);
    return d;
}

static bool is_ipv4(const char *s)
{
    struct in_addr a;
    return inet_pton(AF_INET, s, &a) == 1;
}

static bool is_ipv6(const char *s)
{
    struct in6_addr a;
    return inet_pton(AF_INET6, s, &a) == 1;
}

static bool valid_port(const char *s)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 5 || s[n] != '\0')
        return false;
    long v = strtol(s, NULL, 10);
    return v >= 1 && v <= 65535;
}

enum host_kind { HOST_IP, HOST_NAME_OR_IP };

/* Splits "host:port", "[v6]:port", "host" or "[v6]" into HOST (without
 * brackets) and PORT (NULL when there is none). Returns NULL or why not. */
static const char *split_hostport(const char *s, char host[static 256], const char **port)
{
    const char *end;
    if (s[0] == '[') {
        end = strchr(s, ']');
        if (end == NULL)
            return "missing ']' after the IPv6 address";
        s++;
        if (end[1] != '\0' && end[1] != ':')
            return "unexpected text after ']'";
        *port = end[1] == ':' ? end + 2 : NULL;
    } else {
        end = strchr(s, ':');
        *port = end ? end + 1 : NULL;
        end = end ? end : s + strlen(s);
    }
    size_t n = (size_t)(end - s);
    if (n == 0 || n > 255)
        return "missing host";
    memcpy(host, s, n);
    host[n] = '\0';
    return NULL;
}

/* Checks "host:port", "[v6]:port" and, when the port is optional, "host",
 * "[v6]" and a bare v6 address. Returns NULL or why the value is wrong. */
static const char *check_hostport(const char *s, enum host_kind kind, bool need_port)
{
    bool bracketed = s[0] == '[';
    if (!bracketed && strchr(s, ':') != strrchr(s, ':')) {
        if (need_port || !is_ipv6(s))
            return "an IPv6 address must be written in brackets: [ADDRESS]:PORT";
        return NULL;
    }
    char host[256];
    const char *port, *why = split_hostport(s, host, &port);
    if (why != NULL)
        return why;
    if (port == NULL && need_port)
        return "missing ':PORT'";
    if (bracketed && !is_ipv6(host))
        return "not an IPv6 address inside [ ]";
    if (!bracketed && kind == HOST_IP && !is_ipv4(host))
        return "not an IP address";
    if (!bracketed && !is_ipv4(host) && !valid_domain(host))
        return "not a valid host name or IP address";
    if (port != NULL && !valid_port(port))
        return "the port must be a number from 1 to 65535";
    return NULL;
}

/* "ip" or "ip/len", IPv4 or IPv6. */
static const char *check_cidr(const char *s)
{
    char addr[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof addr)
        return "not an IP address";
    memcpy(addr, s, n);
    addr[n] = '\0';
    int max = is_ipv4(addr) ? 32 : is_ipv6(addr) ? 128 : -1;
    if (max < 0)
        return "not an IP address";
    if (slash == NULL)
        return NULL;
    const char *len = slash + 1;
    size_t digits = strspn(len, "0123456789");
    if (digits == 0 || digits > 3 || len[digits] != '\0' || atoi(len) > max)
        return max == 32 ? "the prefix length must be 0 to 32" : "the prefix length must be 0 to 128";
    return NULL;
}

/* A path that the daemon will open for reading later. */
static const char *check_readable(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return strerror(errno);
    struct stat st;
    bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    close(fd);
    return regular ? NULL : "not a regular file";
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    bool slash = n > 0 && dir[n - 1] == '/';
    return xasprintf("%s%s%s", dir, slash ? "" : "/", name);
}

/* ------------------------------------------------------------------------
 * Sections
 */

static void list_check_each(const struct sec *s, const char *name, const struct strlist *l,
                            enum host_kind kind, bool need_port, const char *form)
{
    for (size_t i = 0; i < l->n; i++) {
        const char *why = check_hostport(l->v[i], kind, need_port);
        if (why != NULL)
            opt_error(s, name, item_line(s, name, i), "'%s' is not %s: %s", l->v[i], form, why);
    }
}

static void load_top(struct sec *s, struct bmx_config *c)
{
    c->hostname = get_str(s, "hostname", NULL);
    if (c->hostname != NULL) {
        char *n = normalize_domain(c->hostname);
        if (!valid_domain(n))
            opt_error(s, "hostname", opt_line(s, "hostname"), "'%s' is not a valid host name",
                      c->hostname);
        free(c->hostname);
        c->hostname = n;
    } else if (!opt_given(s, "hostname")) {
        char buf[HOST_NAME_MAX + 1] = "";
        if (gethostname(buf, sizeof buf) != 0 || buf[0] == '\0')
            report(s->L, 0, "hostname: not set, and gethostname() failed: %s", strerror(errno));
        else
            c->hostname = xstrdup(buf);
    }
    c->spool = get_str(s, "spool", DEF_SPOOL);
    if (c->spool == NULL)
        c->spool = xstrdup(DEF_SPOOL);
    c->user = get_str(s, "user", NULL);
    if (c->user != NULL && getpwnam(c->user) == NULL)
        opt_error(s, "user", opt_line(s, "user"), "no such user '%s'", c->user);

    get_list(s, "listen", def_listen, &c->listen);
    if (c->listen.n == 0)
        opt_error(s, "listen", opt_line(s, "listen"), "no address to listen on");
    list_check_each(s, "listen", &c->listen, HOST_IP, true, "ADDRESS:PORT or [IPv6]:PORT");
    get_list(s, "resolver", NULL, &c->resolver);
    list_check_each(s, "resolver", &c->resolver, HOST_IP, false, "an IP address with an optional :PORT");

    c->control = get_str(s, "control", NULL);
    if (c->control == NULL)
        c->control = path_join(c->spool, "control");
    struct sockaddr_un addr;
    if (strlen(c->control) >= sizeof addr.sun_path)
        opt_error(s, "control", opt_line(s, "control"),
                  "path is too long for a UNIX socket (at most %zu bytes)",
                  sizeof addr.sun_path - 1);
}

/* Stops PEM loading from prompting on the terminal for an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* The first error is the cause; later ones are the callers giving up. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/* Whether the failed PEM read was of an encrypted key (no passphrase is
 * given, so that needs its own message). */
static bool key_was_encrypted(void)
{
    unsigned long e;
    while ((e = ERR_get_error()) != 0)
        if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ)
            return true;
    return false;
}

static bool tls_cert_usable(const struct sec *s, SSL_CTX *ctx, const char *cert)
{
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) == 1)
        return true;
    opt_error(s, "cert", opt_line(s, "cert"),
              "'%s' holds no usable PEM certificate (OpenSSL: %s)", cert, ssl_reason());
    ERR_clear_error();
    return false;
}

/* Read separately from the SSL_CTX so that "not a key" and "not this
 * certificate's key" get different messages. */
static EVP_PKEY *tls_read_key(const struct sec *s, const char *key)
{
    ERR_clear_error();
    FILE *fp = fopen(key, "r");
    EVP_PKEY *pkey = fp ? PEM_read_PrivateKey(fp, NULL, no_passphrase, NULL) : NULL;
    if (fp != NULL)
        fclose(fp);
    if (pkey != NULL)
        return pkey;
    const char *why = ssl_reason();
    if (key_was_encrypted())
        opt_error(s, "key", opt_line(s, "key"),
                  "'%s' is encrypted; the daemon needs an unencrypted key", key);
    else
        opt_error(s, "key", opt_line(s, "key"),
                  "'%s' holds no usable PEM private key (OpenSSL: %s)", key, why);
    ERR_clear_error();
    return NULL;
}

static void check_tls_files(const struct sec *s, SSL_CTX *ctx, const char *cert, const char *key)
{
    const char *cert_why = check_readable(cert), *key_why = check_readable(key);
    if (cert_why != NULL)
        opt_error(s, "cert", opt_line(s, "cert"), "cannot read '%s': %s", cert, cert_why);
    if (key_why != NULL)
        opt_error(s, "key", opt_line(s, "key"), "cannot read '%s': %s", key, key_why);
    if (cert_why != NULL || key_why != NULL)
        return;
    bool cert_ok = tls_cert_usable(s, ctx, cert);
    EVP_PKEY *pkey = tls_read_key(s, key);
    if (cert_ok && pkey != NULL
        && (SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1))
        opt_error(s, "key", opt_line(s, "key"), "'%s' does not match the certificate in '%s'",
                  key, cert);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
}

/* A throwaway context making the calls the daemon will make, so that what
 * passes here also loads there. */
static void check_tls_openssl(const struct sec *s, const struct bmx_config *c)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        report(s->L, sec_line(s), "tls: cannot create an OpenSSL context (%s)", ssl_reason());
        ERR_clear_error();
        return;
    }
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (c->tls.enabled)
        check_tls_files(s, ctx, c->tls.cert, c->tls.key);
    ERR_clear_error();
    if (c->tls.ciphers != NULL && SSL_CTX_set_cipher_list(ctx, c->tls.ciphers) != 1)
        opt_error(s, "ciphers", opt_line(s, "ciphers"), "OpenSSL accepts no cipher in '%s'",
                  c->tls.ciphers);
    ERR_clear_error();
    SSL_CTX_free(ctx);
}

static void load_tls(struct loader *L, cfg_t *root, struct bmx_config *c)
{
    struct sec s = sec_open(L, cfg_getsec(root, "tls"), ent_find(L, ENT_TOP, "tls"));
    c->tls.cert = get_str(&s, "cert", NULL);
    c->tls.key = get_str(&s, "key", NULL);
    c->tls.ciphers = get_str(&s, "ciphers", NULL);
    c->tls.enabled = c->tls.cert != NULL && c->tls.key != NULL;
    if (c->tls.cert != NULL && c->tls.key == NULL)
        report(L, sec_line(&s), "tls: 'cert' is set but 'key' is missing");
    if (c->tls.key != NULL && c->tls.cert == NULL)
        report(L, sec_line(&s), "tls: 'key' is set but 'cert' is missing");
    if (c->tls.ciphers != NULL && c->tls.cert == NULL && c->tls.key == NULL)
        report(L, opt_line(&s, "ciphers"), "tls: 'ciphers' needs 'cert' and 'key'");
    if (c->tls.enabled || c->tls.ciphers != NULL)
        check_tls_openssl(&s, c);
    sec_close(&s);
}

static void load_limits(struct loader *L, cfg_t *root, struct bmx_config *c)
{
    struct sec s = sec_open(L, cfg_getsec(root, "limits"), ent_find(L, ENT_TOP, "limits"));
    if (get_size(&s, "message_size", "50M", &c->limits.message_size)
        && c->limits.message_size == 0) {
        opt_error(&s, "message_size", opt_line(&s, "message_size"), "must be larger than 0");
        parse_size("50M", &c->limits.message_size);
    }
    c->limits.recipients = get_long(&s, "recipients", 100, 1, 100000);
    c->limits.connections = get_long(&s, "connections", 1000, 1, 1000000);
    c->limits.connections_per_ip = get_long(&s, "connections_per_ip", 20, 1, 1000000);
    c->limits.command_timeout = get_positive_duration(&s, "command_timeout", "5m");
    c->limits.data_timeout = get_positive_duration(&s, "data_timeout", "10m");
    c->limits.errors = get_long(&s, "errors", 10, 1, 100000);
    sec_close(&s);
}

static void load_queue(struct loader *L, cfg_t *root, struct bmx_config *c)
{
    struct sec s = sec_open(L, cfg_getsec(root, "queue"), ent_find(L, ENT_TOP, "queue"));
    c->queue.lifetime = get_positive_duration(&s, "lifetime", "10d");
    c->queue.retry_min = get_positive_duration(&s, "retry_min", "1m");
    c->queue.retry_max = get_positive_duration(&s, "retry_max", "1h");
    get_duration(&s, "delay_warning", "0", &c->queue.delay_warning);
    c->queue.concurrency = get_long(&s, "concurrency", 4, 1, 1000);
    c->queue.mx_port = (int)get_long(&s, "mx_port", 25, 1, 65535);
    if (c->queue.retry_min > c->queue.retry_max && c->queue.retry_max > 0) {
        const char *at = opt_given(&s, "retry_min") ? "retry_min" : "retry_max";
        opt_error(&s, at, opt_line(&s, at), "retry_min (%s) is longer than retry_max (%s)",
                  raw(&s, "retry_min", "1m"), raw(&s, "retry_max", "1h"));
    }
    sec_close(&s);
}

static const char *const mode_names[] = { "relay", "catchall", NULL };
static const char *const unverified_names[] = { "tempfail", "accept", NULL };
static const char *const tlsout_names[] = { "may", "encrypt", "verify", "fingerprint", NULL };
static const char *const tlsin_names[] = { "none", "starttls", "implicit", NULL };

/* "sha256:" and 32 bytes of hex, colons between bytes allowed; stored as
 * "sha256:" and 64 lower-case hex digits. */
static char *normalize_fingerprint(const char *v)
{
    if (strncasecmp(v, "sha256:", 7) != 0)
        return NULL;
    char hex[65];
    size_t n = 0;
    for (const char *p = v + 7; *p; p++) {
        if (*p == ':')
            continue;
        if (!isxdigit((unsigned char)*p) || n == 64)
            return NULL;
        hex[n++] = (char)tolower((unsigned char)*p);
    }
    if (n != 64)
        return NULL;
    hex[n] = '\0';
    return xasprintf("sha256:%s", hex);
}

static void load_domain_tls(struct sec *s, struct bmx_domain *d)
{
    d->tls = (enum tls_mode_out)get_enum(s, "tls", tlsout_names, TLSOUT_MAY);
    const char *fp = raw(s, "fingerprint", NULL);
    if (fp != NULL) {
        d->fingerprint = normalize_fingerprint(fp);
        if (d->fingerprint == NULL)
            opt_error(s, "fingerprint", opt_line(s, "fingerprint"),
                      "'%s' is not sha256: followed by 64 hex digits", fp);
        if (d->tls != TLSOUT_FINGERPRINT)
            opt_error(s, "fingerprint", opt_line(s, "fingerprint"),
                      "only used with tls = \"fingerprint\"");
    }
    if (d->tls == TLSOUT_FINGERPRINT && fp == NULL)
        opt_error(s, "tls", opt_line(s, "tls"), "\"fingerprint\" needs a 'fingerprint' option");
}

/* A catch-all domain's mailbox must be defined (mailboxes are loaded
 * first); it is stored in the mailbox's own spelling, so users may strcmp. */
static void resolve_mailbox(struct sec *s, struct bmx_domain *d, const struct bmx_config *c)
{
    const struct bmx_mailbox *m = config_find_mailbox(c, d->mailbox);
    if (m == NULL) {
        opt_error(s, "mailbox", opt_line(s, "mailbox"), "no mailbox \"%s\" is defined",
                  d->mailbox);
        return;
    }
    free(d->mailbox);
    d->mailbox = xstrdup(m->name);
}

/* What only makes sense for one of the two modes. */
static void check_domain_mode(struct sec *s, struct bmx_domain *d, const struct bmx_config *c)
{
    if (d->mode == MODE_RELAY && d->mailbox != NULL)
        opt_error(s, "mailbox", opt_line(s, "mailbox"),
                  "only catch-all domains have a mailbox (mode is relay)");
    if (d->mode != MODE_CATCHALL)
        return;
    if (d->mailbox == NULL && !opt_given(s, "mailbox"))
        report(s->L, sec_line(s), "%s: mode catchall needs a 'mailbox'", s->desc);
    if (d->mailbox != NULL)
        resolve_mailbox(s, d, c);
    if (d->primary.n > 0)
        opt_error(s, "primary", opt_line(s, "primary"),
                  "a catch-all domain keeps its mail in a mailbox and has no primary");
    if (d->verify)
        opt_error(s, "verify", opt_line(s, "verify"),
                  "a catch-all domain has no primary to verify recipients with");
}

static void load_domain(struct sec *s, struct bmx_domain *d, const struct bmx_config *c)
{
    d->line = sec_line(s);
    d->name = normalize_domain(cfg_title(s->cfg));
    if (!valid_domain(d->name))
        report(s->L, d->line, "%s: not a valid domain name", s->desc);
    d->mode = (enum domain_mode)get_enum(s, "mode", mode_names, MODE_RELAY);
    get_list(s, "primary", NULL, &d->primary);
    list_check_each(s, "primary", &d->primary, HOST_NAME_OR_IP, false,
                    "HOST, HOST:PORT or [IPv6]:PORT");
    d->recipients = get_str(s, "recipients", NULL);
    const char *why;
    if (d->recipients != NULL && (why = check_readable(d->recipients)) != NULL)
        opt_error(s, "recipients", opt_line(s, "recipients"), "cannot read '%s': %s",
                  d->recipients, why);
    d->verify = get_bool(s, "verify", false);
    d->verify_ttl = get_positive_duration(s, "verify_ttl", "31d");
    d->unverified = (enum unverified_policy)get_enum(s, "unverified", unverified_names,
                                                     UNVERIFIED_TEMPFAIL);
    load_domain_tls(s, d);
    get_duration(s, "lifetime", "0", &d->lifetime);
    d->subdomains = get_bool(s, "subdomains", false);
    d->mailbox = get_str(s, "mailbox", NULL);
    check_domain_mode(s, d, c);
}

/* A login name and a directory name. */
static bool valid_mailbox_name(const char *n)
{
    if (n[0] == '\0' || n[0] == '.' || n[0] == '-' || strlen(n) > 64)
        return false;
    return strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@+")
           == strlen(n);
}

static void load_mailbox(struct sec *s, struct bmx_mailbox *m, const char *spool)
{
    m->line = sec_line(s);
    m->name = xstrdup(cfg_title(s->cfg));
    if (!valid_mailbox_name(m->name))
        report(s->L, m->line, "%s: a mailbox name may only contain letters, digits and . _ - @ + "
               "(and not start with . or -)", s->desc);
    m->password = get_str(s, "password", NULL);
    /* A plain-text password here would be compared against crypt(3)
     * output and never match; catch it now. */
    if (m->password != NULL && m->password[0] != '$')
        opt_error(s, "password", opt_line(s, "password"),
                  "must be a crypt(3) hash such as $y$... (mkpasswd -m yescrypt), not plain text");
    m->maildir = get_str(s, "maildir", NULL);
    if (m->maildir == NULL) {
        char *dir = path_join(spool, "catchall");
        m->maildir = path_join(dir, m->name);
        free(dir);
    }
    get_size(s, "quota", "0", &m->quota);
}

static void load_listener(struct loader *L, cfg_t *root, const char *name,
                          struct bmx_listener_set *ls)
{
    struct sec s = sec_open(L, cfg_getsec(root, name), ent_find(L, ENT_TOP, name));
    ls->enabled = s.ent >= 0;
    if (ls->enabled) {
        get_list(&s, "listen", NULL, &ls->listen);
        if (ls->listen.n == 0)
            opt_error(&s, "listen", opt_line(&s, "listen"), "no address to listen on");
        list_check_each(&s, "listen", &ls->listen, HOST_IP, true, "ADDRESS:PORT or [IPv6]:PORT");
        ls->tls = (enum tls_mode_in)get_enum(&s, "tls", tlsin_names, TLSIN_IMPLICIT);
    }
    sec_close(&s);
}

static void load_etrn(struct loader *L, cfg_t *root, struct bmx_config *c)
{
    struct sec s = sec_open(L, cfg_getsec(root, "etrn"), ent_find(L, ENT_TOP, "etrn"));
    c->etrn.enabled = s.ent >= 0;
    if (c->etrn.enabled) {
        get_list(&s, "allow", NULL, &c->etrn.allow);
        if (c->etrn.allow.n == 0)
            opt_error(&s, "allow", opt_line(&s, "allow"), "no client is allowed to use ETRN");
        for (size_t i = 0; i < c->etrn.allow.n; i++) {
            const char *why = check_cidr(c->etrn.allow.v[i]);
            if (why != NULL)
                opt_error(&s, "allow", item_line(&s, "allow", i),
                          "'%s' is not an IP address or ADDRESS/LENGTH: %s",
                          c->etrn.allow.v[i], why);
        }
    }
    sec_close(&s);
}

/* The outline entry of libconfuse's K-th section NAME. Duplicates were
 * dropped before libconfuse saw them, so the K-th entries correspond; the
 * title check guards against ${VAR} titles that only libconfuse expands. */
static int section_entry(const struct loader *L, cfg_t *sec, const char *name, size_t k)
{
    int e = ent_nth(L, ENT_TOP, name, k);
    if (e >= 0 && same_title(L->ent[e].title, cfg_title(sec)))
        return e;
    for (size_t i = 0; (e = ent_nth(L, ENT_TOP, name, i)) >= 0; i++)
        if (same_title(L->ent[e].title, cfg_title(sec)))
            return e;
    return ENT_NONE;
}

static void load_domains(struct loader *L, cfg_t *root, struct bmx_config *c)
{
    size_t n = cfg_size(root, "domain");
    c->domains = xcalloc(n, sizeof *c->domains);
    c->ndomains = n;
    for (size_t i = 0; i < n; i++) {
        cfg_t *sec = cfg_getnsec(root, "domain", (unsigned)i);
        struct sec s = sec_open(L, sec, section_entry(L, sec, "domain", i));
        load_domain(&s, &c->domains[i], c);
        sec_close(&s);
    }
}

static void load_mailboxes(struct loader *L, cfg_t *root, struct bmx_config *c)
{
    size_t n = cfg_size(root, "mailbox");
    c->mailboxes = xcalloc(n, sizeof *c->mailboxes);
    c->nmailboxes = n;
    for (size_t i = 0; i < n; i++) {
        cfg_t *sec = cfg_getnsec(root, "mailbox", (unsigned)i);
        struct sec s = sec_open(L, sec, section_entry(L, sec, "mailbox", i));
        load_mailbox(&s, &c->mailboxes[i], c->spool);
        sec_close(&s);
    }
}

/* ------------------------------------------------------------------------
 * Checks across sections
 */

static void check_listener(struct loader *L, const struct bmx_config *c, const char *name,
                           const struct bmx_listener_set *ls)
{
    if (!ls->enabled)
        return;
    int sec = ent_find(L, ENT_TOP, name);
    int line = L->ent[sec].line;
    if (c->nmailboxes == 0)
        report(L, line, "%s: there is no mailbox to serve (define a mailbox section)", name);
    if (ls->tls != TLSIN_NONE && !c->tls.enabled) {
        int t = ent_find(L, sec, "tls");
        report(L, t >= 0 ? L->ent[t].line : line,
               "%s: tls = \"%s\" needs the tls section's cert and key (or tls = \"none\")",
               name, tlsin_names[ls->tls]);
    }
}

/* Without a password nobody can log in to collect the mail. */
static void check_passwords(struct loader *L, const struct bmx_config *c)
{
    if (!c->pop3.enabled && !c->imap.enabled)
        return;
    for (size_t i = 0; i < c->nmailboxes; i++)
        if (c->mailboxes[i].password == NULL)
            report(L, c->mailboxes[i].line,
                   "mailbox \"%s\": no 'password', so it cannot log in over POP3 or IMAP",
                   c->mailboxes[i].name);
}

/* Reports the J-th address of SECTION's listen list if it already occurs
 * among the N addresses in SEEN. */
static void check_clash(struct loader *L, const char *section, const struct strlist *l,
                        size_t j, const char **seen, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(seen[i], l->v[j]) != 0)
            continue;
        int sec = section ? ent_find(L, ENT_TOP, section) : ENT_TOP;
        int e = ent_find(L, sec, "listen");
        int line = e >= 0 && j < L->ent[e].nitems ? L->ent[e].item_line[j] : 0;
        report(L, line, "%s%slisten: '%s' is used twice", section ? section : "",
               section ? ": " : "", l->v[j]);
        return;
    }
}

/* Two listeners on one address would fail at bind time; say so now. */
static void check_listen_clash(struct loader *L, const struct bmx_config *c)
{
    const struct strlist *lists[] = { &c->listen, &c->pop3.listen, &c->imap.listen };
    const char *sections[] = { NULL, "pop3", "imap" };
    size_t total = c->listen.n + c->pop3.listen.n + c->imap.listen.n, n = 0;
    const char **seen = xcalloc(total, sizeof *seen);
    for (size_t k = 0; k < 3; k++) {
        for (size_t j = 0; j < lists[k]->n; j++) {
            check_clash(L, sections[k], lists[k], j, seen, n);
            seen[n++] = lists[k]->v[j];
        }
    }
    free(seen);
}

/* ------------------------------------------------------------------------
 * Public interface
 */

static struct bmx_config *convert(struct loader *L, cfg_t *root)
{
    struct bmx_config *c = xcalloc(1, sizeof *c);
    c->file = xstrdup(L->file);
    struct sec top = sec_open(L, root, ENT_TOP);
    load_top(&top, c);
    sec_close(&top);
    load_tls(L, root, c);
    load_limits(L, root, c);
    load_queue(L, root, c);
    load_mailboxes(L, root, c);
    load_domains(L, root, c);
    load_listener(L, root, "pop3", &c->pop3);
    load_listener(L, root, "imap", &c->imap);
    load_etrn(L, root, c);
    check_listener(L, c, "pop3", &c->pop3);
    check_listener(L, c, "imap", &c->imap);
    check_passwords(L, c);
    check_listen_clash(L, c);
    return c;
}

struct bmx_config *config_load(const char *file, FILE *errs)
{
    struct loader L = { .file = file };
    struct bmx_config *c = NULL;
    if (read_file(&L) == 0) {
        check_nul(&L);
        lex(&L);
        check_braces(&L);
    }
    /* After a lexical problem the statement structure is guesswork, and
     * further messages would mostly be noise. */
    if (L.nprob == 0 && !L.lex_failed) {
        check_block(&L, 0, top_opts, ENT_TOP);
        cfg_t *root = confuse_parse(&L);
        if (root != NULL) {
            c = convert(&L, root);
            cfg_free(root);
        }
    }
    if (L.nprob > 0) {
        print_problems(&L, errs);
        config_free(c);
        c = NULL;
    }
    loader_free(&L);
    return c;
}

static void free_domain(struct bmx_domain *d)
{
    free(d->name);
    strlist_free(&d->primary);
    free(d->recipients);
    free(d->fingerprint);
    free(d->mailbox);
}

static void free_mailbox(struct bmx_mailbox *m)
{
    free(m->name);
    free(m->password);
    free(m->maildir);
}

void config_free(struct bmx_config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->ndomains; i++)
        free_domain(&c->domains[i]);
    for (size_t i = 0; i < c->nmailboxes; i++)
        free_mailbox(&c->mailboxes[i]);
    free(c->domains);
    free(c->mailboxes);
    strlist_free(&c->listen);
    strlist_free(&c->resolver);
    strlist_free(&c->pop3.listen);
    strlist_free(&c->imap.listen);
    strlist_free(&c->etrn.allow);
    free(c->tls.cert);
    free(c->tls.key);
    free(c->tls.ciphers);
    free(c->file);
    free(c->hostname);
    free(c->spool);
    free(c->user);
    free(c->control);
    free(c);
}

static const struct bmx_domain *find_exact(const struct bmx_config *c, const char *name)
{
    for (size_t i = 0; i < c->ndomains; i++)
        if (strcmp(c->domains[i].name, name) == 0)
            return &c->domains[i];
    return NULL;
}

const struct bmx_domain *config_find_domain(const struct bmx_config *c, const char *domain)
{
    if (c == NULL || domain == NULL)
        return NULL;
    char name[256];
    size_t n = strlen(domain);
    if (n > 0 && domain[n - 1] == '.')
        n--;
    if (n == 0 || n >= sizeof name)
        return NULL;
    for (size_t i = 0; i < n; i++)
        name[i] = (char)tolower((unsigned char)domain[i]);
    name[n] = '\0';
    const struct bmx_domain *d = find_exact(c, name);
    if (d != NULL)
        return d;
    /* The nearest parent that covers its subdomains. */
    for (const char *p = strchr(name, '.'); p != NULL; p = strchr(p + 1, '.')) {
        d = find_exact(c, p + 1);
        if (d != NULL && d->subdomains)
            return d;
    }
    return NULL;
}

const struct bmx_mailbox *config_find_mailbox(const struct bmx_config *c, const char *name)
{
    if (c == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < c->nmailboxes; i++)
        if (strcasecmp(c->mailboxes[i].name, name) == 0)
            return &c->mailboxes[i];
    return NULL;
}
