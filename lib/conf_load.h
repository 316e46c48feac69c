/* A schema-driven libconfuse loader that reports every problem as
 * "FILE:LINE: message" with the right line. libconfuse on its own stops at
 * the first error, miscounts lines after comments and silently merges or
 * overwrites repeated options, so a file is read in three passes: our own
 * lexer (libconfuse's token rules; it blanks comments out of a copy of the
 * text), a statement check against the schema that records the line of
 * every section, option and list item (the "outline") and blanks bad
 * statements out of the copy, then libconfuse on what is left.
 *
 * Extension: "pair" statements, NAME "key" = "value", which libconfuse has
 * no syntax for (fetchd's map "sales@example.org" = "alice"). They are
 * declared as "section|name" and read from the outline; libconfuse never
 * sees them.
 *
 * Every schema option should be a CFG_STR or CFG_STR_LIST: values are
 * converted by the confsec_* getters so that all value errors carry lines.
 *
 * Used by backupmx (lib/config.c) and fetchd (fetchd/fetchd_conf.c). Not
 * thread-safe: libconfuse's lexer is a global flex scanner anyway. */
#ifndef BMX_CONF_LOAD_H
#define BMX_CONF_LOAD_H

#include <confuse.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct confdoc;

/* What a document is checked against. */
struct confschema {
    cfg_opt_t *opts;            /* terminated by CFG_END */
    const char *const *pairs;   /* "section|name" pair statements, NULL-terminated, or NULL */
    /* Whether two section titles (or two pair keys) name the same thing,
     * for duplicates and for matching libconfuse's sections to the outline;
     * NULL compares exactly. */
    bool (*same_title)(const char *a, const char *b);
};

/* One section seen both ways: libconfuse's values and the outline's lines. */
struct confsec {
    struct confdoc *doc;
    cfg_t *cfg;
    int ent;                    /* its outline entry; < 0 at the top or when absent */
    char *desc;                 /* "" at the top, "queue", "account \"x\"" */
};

/* Reads and parses FILE against SCHEMA, which must outlive the document.
 * Returns the document (always, for the problem list); *root is the
 * libconfuse tree or NULL when the file could not be parsed. */
struct confdoc *confdoc_parse(const char *file, const struct confschema *schema, cfg_t **root);
/* The same with exact titles: SCHEMA's options (terminated by CFG_END) and
 * PAIRS (see struct confschema). */
struct confdoc *confdoc_load(const char *file, cfg_opt_t *schema,
                             const char *const *pairs, cfg_t **root);
/* Prints the problems sorted by line to ERRS; returns their number. */
size_t confdoc_finish(struct confdoc *doc, FILE *errs);
void confdoc_free(struct confdoc *doc, cfg_t *root);
void confdoc_report(struct confdoc *doc, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *confdoc_file(const struct confdoc *doc);

struct confsec confsec_top(struct confdoc *doc, cfg_t *root);
/* The K-th titled (or untitled) section NAME of the top level; for a
 * single section, k = 0. */
struct confsec confsec_nth(struct confdoc *doc, cfg_t *root, const char *name, unsigned k);
void confsec_close(struct confsec *s);

/* Whether the section is in the file (the top level always is). */
bool confsec_present(const struct confsec *s);
/* Where the section starts (0 when it is not in the file). */
int confsec_line(const struct confsec *s);
/* Where option NAME is set, or else where its section starts. */
int confsec_opt_line(const struct confsec *s, const char *name);
/* Where the K-th value of option NAME is, or else confsec_opt_line(). */
int confsec_item_line(const struct confsec *s, const char *name, size_t k);
/* How many values of option NAME the file gives (0 when it is not set). */
size_t confsec_nitems(const struct confsec *s, const char *name);
bool confsec_given(const struct confsec *s, const char *name);
/* Reports "SECTION: NAME: message" at LINE. */
void confsec_error(const struct confsec *s, const char *name, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same at confsec_opt_line(S, NAME). */
void confsec_opt_error(const struct confsec *s, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Getters: a bad value is reported and the default returned. */
const char *confsec_raw(const struct confsec *s, const char *name, const char *def);
char *confsec_str(const struct confsec *s, const char *name, const char *def);
int64_t confsec_duration(const struct confsec *s, const char *name, const char *def);
/* A duration that must be longer than 0: 0 is reported, DEF returned. */
int64_t confsec_positive_duration(const struct confsec *s, const char *name, const char *def);
uint64_t confsec_size(const struct confsec *s, const char *name, const char *def);
long confsec_long(const struct confsec *s, const char *name, long def, long min, long max);
bool confsec_bool(const struct confsec *s, const char *name, bool def);
int confsec_enum(const struct confsec *s, const char *name, const char *const *names, int def);
unsigned confsec_list_size(const struct confsec *s, const char *name);
const char *confsec_list_item(const struct confsec *s, const char *name, unsigned k);

/* Pair statements NAME "key" = "value" of this section, in file order. */
size_t confsec_npairs(const struct confsec *s, const char *name);
const char *confsec_pair_key(const struct confsec *s, const char *name, size_t k);
const char *confsec_pair_value(const struct confsec *s, const char *name, size_t k);
int confsec_pair_line(const struct confsec *s, const char *name, size_t k);

/* Allocation for configuration loaders: configuration is loaded at startup,
 * where running out of memory leaves nothing sensible to do but stop, so
 * these print "PROGRAM: out of memory while loading the configuration" and
 * abort instead of returning NULL. */
void *conf_xrealloc(void *p, size_t n);
void *conf_xcalloc(size_t n, size_t size);
char *conf_xstrndup(const char *s, size_t n);
char *conf_xstrdup(const char *s);     /* NULL for NULL */
char *conf_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Letters, digits and hyphens in dot-separated labels of 1-63 characters,
 * at most 253 in all (no trailing dot). */
bool conf_valid_domain(const char *name);
/* A SHA-256 fingerprint ("sha256:" prefix, optional unless NEED_PREFIX;
 * colons allowed) as 64 lower-case hex digits in OUT. */
bool conf_sha256_hex(const char *v, bool need_prefix, char out[65]);

#endif
