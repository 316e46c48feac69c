/* RFC 5321 paths ("<local@domain>") as they appear in MAIL FROM and RCPT TO.
 * The parser is strict about syntax and reports sender-specified routing
 * (source routes, '%', '!', a second '@') separately, so that the policy can
 * refuse it with 5.7.1 instead of a syntax error. */
#ifndef BMX_ADDR_H
#define BMX_ADDR_H

#include <stdbool.h>
#include <stddef.h>

#define ADDR_LOCAL_MAX 64        /* RFC 5321 4.5.3.1.1 (octets) */
#define ADDR_DOMAIN_MAX 255      /* 4.5.3.1.2 */
#define ADDR_PATH_MAX 256        /* 4.5.3.1.3, including the brackets */

enum addr_status {
    ADDR_OK = 0,
    ADDR_SYNTAX,                 /* not a valid path */
    ADDR_TOOLONG,                /* a length limit of 4.5.3.1 exceeded */
    ADDR_ROUTING,                /* valid syntax, but sender-specified routing */
};

struct mailaddr {
    bool null;                   /* the null path <> */
    bool literal;                /* domain is an address literal [..] */
    bool nonascii;               /* UTF-8 in local part or domain (RFC 6531) */
    char local[ADDR_LOCAL_MAX * 2 + 3];  /* as written (quotes kept) */
    char domain[ADDR_DOMAIN_MAX + 1];    /* lower case, no trailing dot */
    char full[ADDR_PATH_MAX + 8];        /* "local@domain", "" when null */
};

/* Parses a path at S (which must start with '<'). ALLOW_NULL permits "<>".
 * On success (ADDR_OK or ADDR_ROUTING) *END points just past '>'. */
enum addr_status addr_parse_path(const char *s, bool allow_null,
                                 struct mailaddr *a, const char **end);

/* Lower-cases an ASCII string in place (UTF-8 bytes are left alone). */
void addr_lower(char *s);

/* True when the UTF-8 in [s, s+len) is well-formed. */
bool utf8_valid(const unsigned char *s, size_t len);

#endif
