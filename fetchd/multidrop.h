/* Multidrop routing: who a message pulled from a shared mailbox is for.
 *
 * The recipients come from the topmost occurrence of the envelope header
 * (X-Original-To by default: the one the catch-all wrote; anything below it
 * came with the message), restricted to the local domains; without a usable
 * one, from the To: and Cc: addresses in the local domains; failing that,
 * the postmaster. "map" rewrites addresses. The envelope sender is the
 * topmost Return-Path (From: if there is none).
 *
 * Pure parsing, no I/O: tests/unit/test_multidrop.c covers it. */
#ifndef FETCHD_MULTIDROP_H
#define FETCHD_MULTIDROP_H

#include <stdbool.h>
#include <stddef.h>

#include "fetchd_conf.h"

struct md_rules {
    const char *header;         /* envelope header name */
    char *const *localdomains;  /* lower case; none = accept any domain from
                                   the envelope header, no To/Cc fallback */
    size_t nlocal;
    const struct fd_map *maps;
    size_t nmaps;
    const char *postmaster;
};

struct md_route {
    char *sender;               /* "" for the null sender <> */
    char **rcpts;
    size_t nrcpts;
    const char *source;         /* the header name, "To/Cc" or "postmaster" */
};

/* Routes the message MSG (LEN bytes, CRLF or LF lines). 0, or -1 when out
 * of memory. */
int md_route(const char *msg, size_t len, const struct md_rules *r, struct md_route *out);
void md_route_free(struct md_route *rt);

/* The unfolded value of the topmost header field NAME (case-insensitive),
 * malloc'd, or NULL. Only the header section is searched. */
char *md_header(const char *msg, size_t len, const char *name);

/* Addresses (addr-specs, domain lower-cased) in an address-list header
 * value: "A <a@x>, b@y (c), g: c@z;". Returns the count; *out is malloc'd
 * (free with md_free_list). Invalid entries are skipped. */
size_t md_addresses(const char *value, char ***out);
void md_free_list(char **list, size_t n);

/* Byte offset and length of the topmost header field NAME, including its
 * continuation lines and line end, in *off and *flen; false if there is none. */
bool md_field_span(const char *msg, size_t len, const char *name, size_t *off, size_t *flen);

#endif
