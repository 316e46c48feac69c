/* A schema-driven libconfuse loader that reports every problem as
 * "FILE:LINE: message" with the right line (the same three passes as
 * lib/config.c: our own lexer, a statement check against the schema that
 * records the line of every option, then libconfuse on a copy with comments
 * and bad statements blanked out).
 *
 * Extension: "pair" statements, NAME "key" = "value", which libconfuse has
 * no syntax for (fetchd's map "sales@example.org" = "alice"). They are
 * declared as "section|name" and read from the outline; libconfuse never
 * sees them.
 *
 * Every schema option should be a CFG_STR or CFG_STR_LIST: values are
 * converted by the confsec_* getters so that all value errors carry lines. */
#ifndef FETCHD_CONF_LOAD_H
#define FETCHD_CONF_LOAD_H

#include <confuse.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct confdoc;

/* One section seen both ways: libconfuse's values and the outline's lines. */
struct confsec {
    struct confdoc *doc;
    cfg_t *cfg;
    int ent;
    char *desc;                 /* "" at the top, "account \"x\"" */
};

/* Reads and parses FILE against SCHEMA (terminated by CFG_END). PAIRS is a
 * NULL-terminated list of "section|name" pair statements (or NULL).
 * Returns the document (always, for the problem list); *root is the
 * libconfuse tree or NULL when the file could not be parsed. */
struct confdoc *confdoc_load(const char *file, cfg_opt_t *schema,
                             const char *const *pairs, cfg_t **root);
/* Prints the problems sorted by line to ERRS; returns their number. */
size_t confdoc_finish(struct confdoc *doc, FILE *errs);
void confdoc_free(struct confdoc *doc, cfg_t *root);
void confdoc_report(struct confdoc *doc, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *confdoc_file(const struct confdoc *doc);

struct confsec confsec_top(struct confdoc *doc, cfg_t *root);
/* The K-th titled (or untitled) section NAME of the top level. */
struct confsec confsec_nth(struct confdoc *doc, cfg_t *root, const char *name, unsigned k);
void confsec_close(struct confsec *s);

int confsec_line(const struct confsec *s);
int confsec_opt_line(const struct confsec *s, const char *name);
int confsec_item_line(const struct confsec *s, const char *name, size_t k);
bool confsec_given(const struct confsec *s, const char *name);
void confsec_error(const struct confsec *s, const char *name, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Getters: a bad value is reported and the default returned. */
const char *confsec_raw(const struct confsec *s, const char *name, const char *def);
char *confsec_str(const struct confsec *s, const char *name, const char *def);
int64_t confsec_duration(const struct confsec *s, const char *name, const char *def);
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

#endif
