/* Schema-driven libconfuse loader with FILE:LINE problem reports: the three
 * passes (lex, check, parse) and the getters described in conf_load.h.
 *
 * Not thread-safe: libconfuse's lexer is a global flex scanner anyway. */
#include "conf_load.h"
#include "units.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------
 * Memory: configuration is loaded at startup, where running out of memory
 * leaves nothing sensible to do but stop.
 */

static _Noreturn void out_of_memory(void)
{
    fprintf(stderr, "%s: out of memory while loading the configuration\n",
            program_invocation_short_name);
    abort();
}

void *conf_xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (p == NULL)
        out_of_memory();
    return p;
}

void *conf_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (p == NULL)
        out_of_memory();
    return p;
}

char *conf_xstrndup(const char *s, size_t n)
{
    char *d = conf_xrealloc(NULL, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *conf_xstrdup(const char *s)
{
    return s ? conf_xstrndup(s, strlen(s)) : NULL;
}

char *conf_xasprintf(const char *fmt, ...)
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
    *v = conf_xrealloc(*v, *cap * sz);
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
    const cfg_opt_t *opt;       /* NULL for a pair statement */
    const char *name;           /* the option's name */
    const char *title;          /* section title, or a pair's key */
    const char *value;          /* a pair's value */
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

struct confdoc {
    const char *file;
    struct confschema schema;
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

/* A problem is one line of output ("FILE:LINE: message"), also when the
 * message quotes a value with a newline or another control character in
 * it (from the file, or from an escape such as "\n"): those are written
 * as \xNN. */
static char *escape_controls(char *msg)
{
    size_t n = 0;
    for (const char *p = msg; *p; p++)
        n += iscntrl((unsigned char)*p) ? 4 : 1;
    char *out = malloc(n + 1), *o = out;
    if (out == NULL)
        return msg;
    for (const char *p = msg; *p; p++) {
        if (iscntrl((unsigned char)*p))
            o += sprintf(o, "\\x%02x", (unsigned)(unsigned char)*p);
        else
            *o++ = *p;
    }
    *o = '\0';
    free(msg);
    return out;
}

static void vreport(struct confdoc *L, int line, const char *fmt, va_list ap)
{
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = conf_xstrdup("out of memory");
    msg = escape_controls(msg);
    grow((void **)&L->prob, &L->capprob, L->nprob, sizeof *L->prob);
    L->prob[L->nprob] = (struct problem){ line, L->nprob, msg };
    L->nprob++;
}

static void report(struct confdoc *L, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(struct confdoc *L, int line, const char *fmt, ...)
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
static void print_problems(struct confdoc *L, FILE *errs)
{
    if (L->nprob > 1)
        qsort(L->prob, L->nprob, sizeof *L->prob, problem_cmp);
    for (size_t i = 0; errs != NULL && i < L->nprob; i++)
        fprintf(errs, "%s:%d: %s\n", L->file, L->prob[i].line, L->prob[i].msg);
    if (errs != NULL)
        fflush(errs);
}

static void doc_free(struct confdoc *L)
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

static int read_file(struct confdoc *L)
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
    L->buf = conf_xstrndup(L->src, L->len);
    return 0;
}

/* libconfuse reads the text as a C string and would stop at a NUL byte. */
static void check_nul(struct confdoc *L)
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
static void blank(struct confdoc *L, size_t from, size_t to)
{
    for (size_t i = from; i < to && i < L->len; i++)
        if (L->buf[i] != '\n')
            L->buf[i] = ' ';
}

static void add_token(struct confdoc *L, enum tok_type type, int line,
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

static size_t skip_line_comment(struct confdoc *L, size_t i)
{
    size_t j = i;
    while (j < L->len && L->src[j] != '\n')
        j++;
    blank(L, i, j);
    return j;
}

static size_t skip_block_comment(struct confdoc *L, size_t i, int *line)
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
static size_t lex_quoted(struct confdoc *L, size_t i, int *line)
{
    const char *s = L->src;
    char q = s[i];
    int open_line = *line;
    struct sbuf b = { conf_xstrdup(""), 0, 1 };
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
/* The token keeps the line it starts on; the lines inside it still count. */
static size_t lex_env(struct confdoc *L, size_t i, int *line)
{
    const char *end = strchr(L->src + i, '}');
    size_t j = end ? (size_t)(end - L->src) + 1 : L->len;
    add_token(L, T_STR, *line, i, j, conf_xstrndup(L->src + i, j - i));
    for (size_t k = i; k < j; k++)
        *line += L->src[k] == '\n';
    return j;
}

static void bad_char(struct confdoc *L, int line, int c)
{
    if (isprint(c))
        report(L, line, "unexpected character '%c'", c);
    else
        report(L, line, "unexpected character \\x%02x", (unsigned)c);
    L->lex_failed = true;
}

/* Returns the index after whatever starts at s[i]. */
static size_t lex_one(struct confdoc *L, size_t i, int *line)
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
        return lex_env(L, i, line);
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
    add_token(L, T_STR, *line, i, i + n, conf_xstrndup(s + i, n));
    return i + n;
}

static void lex(struct confdoc *L)
{
    int line = 1;
    size_t i = 0;
    while (i < L->len)
        i = lex_one(L, i, &line);
    add_token(L, T_EOF, line, L->len, L->len, NULL);
}

/* libconfuse accepts a '{' still open at the end of the file, and a '}'
 * missing mid-file only shows up later as a confusing unknown option. */
static void check_braces(struct confdoc *L)
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
static char *section_desc(const struct confdoc *L, int ent)
{
    if (ent < 0)
        return conf_xstrdup("");
    const struct entry *e = &L->ent[ent];
    if (e->title != NULL)
        return conf_xasprintf("%s \"%s\"", e->name, e->title);
    return conf_xstrdup(e->name);
}

/* Drops statement tokens [from, to) from what libconfuse will see. */
static void drop(struct confdoc *L, size_t from, size_t to)
{
    if (to > from)
        blank(L, L->tok[from].start, L->tok[to - 1].end);
}

/* Index after the '}' matching the '{' at p. */
static size_t skip_block(const struct confdoc *L, size_t p)
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

static size_t skip_value(const struct confdoc *L, size_t p)
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
static size_t skip_statement(const struct confdoc *L, size_t p)
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

static int add_entry(struct confdoc *L, int parent, const cfg_opt_t *opt,
                     const char *title, int line)
{
    grow((void **)&L->ent, &L->capent, L->nent, sizeof *L->ent);
    L->ent[L->nent] = (struct entry){ parent, opt, opt->name, title, NULL, line, NULL, 0 };
    return (int)L->nent++;
}

static void add_item(struct entry *e, int line)
{
    e->item_line = conf_xrealloc(e->item_line, (e->nitems + 1) * sizeof *e->item_line);
    e->item_line[e->nitems++] = line;
}

static int ent_nth(const struct confdoc *L, int parent, const char *name, size_t k)
{
    if (parent == ENT_NONE)
        return ENT_NONE;
    for (size_t i = 0; i < L->nent; i++)
        if (L->ent[i].parent == parent && strcmp(L->ent[i].name, name) == 0 && k-- == 0)
            return (int)i;
    return ENT_NONE;
}

static int ent_find(const struct confdoc *L, int parent, const char *name)
{
    return ent_nth(L, parent, name, 0);
}

/* Section titles and pair keys compare as the schema says, or exactly. */
static bool same_title(const struct confdoc *L, const char *a, const char *b)
{
    if (L->schema.same_title != NULL)
        return L->schema.same_title(a, b);
    return strcmp(a, b) == 0;
}

static int find_duplicate(const struct confdoc *L, int parent, const cfg_opt_t *opt,
                          const char *title)
{
    for (size_t k = 0;; k++) {
        int i = ent_nth(L, parent, opt->name, k);
        if (i < 0)
            return ENT_NONE;
        if (title == NULL || same_title(L, L->ent[i].title, title))
            return i;
    }
}

static void report_unknown(struct confdoc *L, const struct token *t,
                           const cfg_opt_t *schema, int parent)
{
    char *where = section_desc(L, parent);
    const char *hint = suggest(schema, t->text);
    char *extra = NULL;
    if (hint != NULL)
        extra = conf_xasprintf(" (did you mean '%s'?)", hint);
    else if (parent >= 0 && schema_find(L->schema.opts, t->text) != NULL)
        extra = conf_xasprintf(" (is a '}' missing before it?)");
    report(L, t->line, "unknown option '%s'%s%s%s", t->text,
           *where ? " in " : "", where, extra ? extra : "");
    free(extra);
    free(where);
}

static size_t check_block(struct confdoc *L, size_t p, const cfg_opt_t *schema, int parent);

static size_t check_section(struct confdoc *L, size_t p, const cfg_opt_t *opt, int parent)
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
static size_t check_list(struct confdoc *L, size_t p, const cfg_opt_t *opt, int *lines,
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
static size_t check_value(struct confdoc *L, size_t p, const cfg_opt_t *opt, int parent)
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
    int *lines = conf_xrealloc(NULL, (skip_value(L, q) - q + 1) * sizeof *lines);
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

static bool is_pair(const struct confdoc *L, int parent, const char *name)
{
    const char *sec = parent >= 0 ? L->ent[parent].name : "";
    size_t n = strlen(sec);
    for (size_t i = 0; L->schema.pairs != NULL && L->schema.pairs[i] != NULL; i++) {
        const char *p = L->schema.pairs[i];
        if (strncmp(p, sec, n) == 0 && p[n] == '|' && strcmp(p + n + 1, name) == 0)
            return true;
    }
    return false;
}

/* NAME "key" = "value": recorded in the outline, never shown to libconfuse. */
static size_t check_pair(struct confdoc *L, size_t p, int parent)
{
    const struct token *t = &L->tok[p];
    const struct token *k = &L->tok[p + 1];
    size_t end;
    if (k->type != T_STR || k[1].type != T_EQ || k[2].type != T_STR) {
        report(L, t->line, "write %s \"KEY\" = \"VALUE\"", t->text);
        end = skip_statement(L, p);
        drop(L, p, end);
        return end;
    }
    end = p + 4;
    drop(L, p, end);
    for (size_t i = 0; i < L->nent; i++) {
        const struct entry *e = &L->ent[i];
        if (e->parent == parent && e->opt == NULL && strcmp(e->name, t->text) == 0
            && same_title(L, e->title, k->text)) {
            char *where = section_desc(L, parent);
            report(L, t->line, "%s%s%s \"%s\" is given twice (first on line %d)", where,
                   *where ? ": " : "", t->text, k->text, e->line);
            free(where);
            return end;
        }
    }
    grow((void **)&L->ent, &L->capent, L->nent, sizeof *L->ent);
    L->ent[L->nent++] = (struct entry){ parent, NULL, t->text, k->text, k[2].text, t->line,
                                        NULL, 0 };
    return end;
}

static size_t check_statement(struct confdoc *L, size_t p, const cfg_opt_t *schema, int parent)
{
    const struct token *t = &L->tok[p];
    if (is_pair(L, parent, t->text))
        return check_pair(L, p, parent);
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
static size_t check_block(struct confdoc *L, size_t p, const cfg_opt_t *schema, int parent)
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
static struct confdoc *current_loader;

static void confuse_error(cfg_t *cfg, const char *fmt, va_list ap)
{
    /* With comments blanked out, cfg->line (of the section being parsed)
     * is the real line. */
    vreport(current_loader, cfg ? cfg->line : 0, fmt, ap);
}

static cfg_t *confuse_parse(struct confdoc *L)
{
    cfg_t *cfg = cfg_init(L->schema.opts, CFGF_NONE);
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
 * Public interface: the document
 */

struct confdoc *confdoc_parse(const char *file, const struct confschema *schema, cfg_t **root)
{
    struct confdoc *L = conf_xrealloc(NULL, sizeof *L);
    *L = (struct confdoc){ .file = file, .schema = *schema };
    *root = NULL;
    if (read_file(L) == 0) {
        check_nul(L);
        lex(L);
        check_braces(L);
    }
    /* After a lexical problem the statement structure is guesswork, and
     * further messages would mostly be noise. */
    if (L->nprob == 0 && !L->lex_failed) {
        check_block(L, 0, L->schema.opts, ENT_TOP);
        *root = confuse_parse(L);
    }
    return L;
}

struct confdoc *confdoc_load(const char *file, cfg_opt_t *schema,
                             const char *const *pairs, cfg_t **root)
{
    struct confschema sch = { .opts = schema, .pairs = pairs };
    return confdoc_parse(file, &sch, root);
}

size_t confdoc_finish(struct confdoc *L, FILE *errs)
{
    print_problems(L, errs);
    return L->nprob;
}

void confdoc_free(struct confdoc *L, cfg_t *root)
{
    if (root != NULL)
        cfg_free(root);
    if (L == NULL)
        return;
    doc_free(L);
    free(L);
}

void confdoc_report(struct confdoc *L, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(L, line, fmt, ap);
    va_end(ap);
}

const char *confdoc_file(const struct confdoc *L)
{
    return L->file;
}

/* ------------------------------------------------------------------------
 * Sections
 */

static struct confsec sec_open(struct confdoc *L, cfg_t *cfg, int ent)
{
    return (struct confsec){ L, cfg, ent, section_desc(L, ent) };
}

struct confsec confsec_top(struct confdoc *L, cfg_t *root)
{
    return sec_open(L, root, ENT_TOP);
}

/* The outline entry of libconfuse's K-th section NAME. Duplicates were
 * dropped before libconfuse saw them, so the K-th entries correspond; the
 * title check guards against ${VAR} titles that only libconfuse expands. */
static int section_entry(const struct confdoc *L, cfg_t *sec, const char *name, size_t k)
{
    int e = ent_nth(L, ENT_TOP, name, k);
    const char *title = sec ? cfg_title(sec) : NULL;
    if (title == NULL || (e >= 0 && (L->ent[e].title == NULL
                                     || same_title(L, L->ent[e].title, title))))
        return e;
    for (size_t i = 0; (e = ent_nth(L, ENT_TOP, name, i)) >= 0; i++)
        if (L->ent[e].title != NULL && same_title(L, L->ent[e].title, title))
            return e;
    return ENT_NONE;
}

struct confsec confsec_nth(struct confdoc *L, cfg_t *root, const char *name, unsigned k)
{
    cfg_t *sec = cfg_getnsec(root, name, k);
    return sec_open(L, sec, section_entry(L, sec, name, k));
}

void confsec_close(struct confsec *s)
{
    free(s->desc);
    s->desc = NULL;
}

bool confsec_present(const struct confsec *s)
{
    return s->ent != ENT_NONE;
}

int confsec_line(const struct confsec *s)
{
    return s->ent >= 0 ? s->doc->ent[s->ent].line : 0;
}

int confsec_opt_line(const struct confsec *s, const char *name)
{
    int i = ent_find(s->doc, s->ent, name);
    return i >= 0 ? s->doc->ent[i].line : confsec_line(s);
}

int confsec_item_line(const struct confsec *s, const char *name, size_t k)
{
    int i = ent_find(s->doc, s->ent, name);
    if (i >= 0 && k < s->doc->ent[i].nitems)
        return s->doc->ent[i].item_line[k];
    return confsec_opt_line(s, name);
}

size_t confsec_nitems(const struct confsec *s, const char *name)
{
    int i = ent_find(s->doc, s->ent, name);
    return i >= 0 ? s->doc->ent[i].nitems : 0;
}

bool confsec_given(const struct confsec *s, const char *name)
{
    return ent_find(s->doc, s->ent, name) >= 0;
}

static void vsec_error(const struct confsec *s, const char *name, int line, const char *fmt,
                       va_list ap)
{
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    report(s->doc, line, "%s%s%s: %s", s->desc, *s->desc ? ": " : "",
           name, msg ? msg : "out of memory");
    free(msg);
}

void confsec_error(const struct confsec *s, const char *name, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsec_error(s, name, line, fmt, ap);
    va_end(ap);
}

void confsec_opt_error(const struct confsec *s, const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsec_error(s, name, confsec_opt_line(s, name), fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------
 * Getters
 */

const char *confsec_raw(const struct confsec *s, const char *name, const char *def)
{
    const char *v = s->cfg ? cfg_getstr(s->cfg, name) : NULL;
    return v != NULL ? v : def;
}

char *confsec_str(const struct confsec *s, const char *name, const char *def)
{
    const char *v = confsec_raw(s, name, def);
    if (v != NULL && *v == '\0') {
        confsec_opt_error(s, name, "must not be empty");
        return conf_xstrdup(def);
    }
    return conf_xstrdup(v);
}

/* Reports a bad value and returns false; *out is then DEF's value. */
static bool get_duration(const struct confsec *s, const char *name, const char *def,
                         int64_t *out)
{
    const char *v = confsec_raw(s, name, def);
    if (parse_duration(v, out) == 0)
        return true;
    confsec_opt_error(s, name, "invalid duration '%s' (a whole number with an optional unit "
                      "s, m, h or d, e.g. 90, 30s, 5m, 1h, 10d)", v);
    parse_duration(def, out);
    return false;
}

int64_t confsec_duration(const struct confsec *s, const char *name, const char *def)
{
    int64_t d = 0;
    get_duration(s, name, def, &d);
    return d;
}

int64_t confsec_positive_duration(const struct confsec *s, const char *name, const char *def)
{
    int64_t d = 0;
    if (get_duration(s, name, def, &d) && d == 0) {
        confsec_opt_error(s, name, "must be longer than 0");
        parse_duration(def, &d);
    }
    return d;
}

uint64_t confsec_size(const struct confsec *s, const char *name, const char *def)
{
    const char *v = confsec_raw(s, name, def);
    uint64_t n = 0;
    if (parse_size(v, &n) == 0)
        return n;
    confsec_opt_error(s, name, "invalid size '%s' (a whole number of bytes with an optional "
                      "unit k, M or G, e.g. 65536, 64k, 50M, 5G)", v);
    parse_size(def, &n);
    return n;
}

long confsec_long(const struct confsec *s, const char *name, long def, long min, long max)
{
    const char *v = confsec_raw(s, name, NULL);
    if (v == NULL)
        return def;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (!isdigit((unsigned char)*v) || *end != '\0' || errno != 0) {
        confsec_opt_error(s, name, "expected a whole number, got '%s'", v);
        return def;
    }
    if (n < min || n > max) {
        confsec_opt_error(s, name, "%ld is out of range (%ld to %ld)", n, min, max);
        return def;
    }
    return n;
}

bool confsec_bool(const struct confsec *s, const char *name, bool def)
{
    const char *v = confsec_raw(s, name, NULL);
    if (v == NULL)
        return def;
    static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return true;
        if (strcasecmp(v, no[i]) == 0)
            return false;
    }
    confsec_opt_error(s, name, "expected true or false, got '%s'", v);
    return def;
}

int confsec_enum(const struct confsec *s, const char *name, const char *const *names, int def)
{
    const char *v = confsec_raw(s, name, NULL);
    if (v == NULL)
        return def;
    for (int i = 0; names[i] != NULL; i++)
        if (strcasecmp(v, names[i]) == 0)
            return i;
    char choices[160] = "";
    for (int i = 0; names[i] != NULL; i++) {
        strncat(choices, i ? ", " : "", sizeof choices - strlen(choices) - 1);
        strncat(choices, names[i], sizeof choices - strlen(choices) - 1);
    }
    confsec_opt_error(s, name, "must be one of %s, not '%s'", choices, v);
    return def;
}

unsigned confsec_list_size(const struct confsec *s, const char *name)
{
    return s->cfg ? cfg_size(s->cfg, name) : 0;
}

const char *confsec_list_item(const struct confsec *s, const char *name, unsigned k)
{
    return cfg_getnstr(s->cfg, name, k);
}

static int pair_ent(const struct confsec *s, const char *name, size_t k)
{
    if (s->ent == ENT_NONE)
        return ENT_NONE;
    for (size_t i = 0; i < s->doc->nent; i++) {
        const struct entry *e = &s->doc->ent[i];
        if (e->parent == s->ent && e->opt == NULL && strcmp(e->name, name) == 0 && k-- == 0)
            return (int)i;
    }
    return ENT_NONE;
}

size_t confsec_npairs(const struct confsec *s, const char *name)
{
    size_t n = 0;
    while (pair_ent(s, name, n) >= 0)
        n++;
    return n;
}

const char *confsec_pair_key(const struct confsec *s, const char *name, size_t k)
{
    int e = pair_ent(s, name, k);
    return e >= 0 ? s->doc->ent[e].title : NULL;
}

const char *confsec_pair_value(const struct confsec *s, const char *name, size_t k)
{
    int e = pair_ent(s, name, k);
    return e >= 0 ? s->doc->ent[e].value : NULL;
}

int confsec_pair_line(const struct confsec *s, const char *name, size_t k)
{
    int e = pair_ent(s, name, k);
    return e >= 0 ? s->doc->ent[e].line : confsec_line(s);
}

/* ---- value syntax shared by the programs' configs ------------------------ */

bool conf_valid_domain(const char *name)
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

bool conf_sha256_hex(const char *v, bool need_prefix, char out[65])
{
    if (strncasecmp(v, "sha256:", 7) == 0)
        v += 7;
    else if (need_prefix)
        return false;
    size_t n = 0;
    for (; *v; v++) {
        if (*v == ':')
            continue;
        if (!isxdigit((unsigned char)*v) || n == 64)
            return false;
        out[n++] = (char)tolower((unsigned char)*v);
    }
    out[n] = '\0';
    return n == 64;
}
