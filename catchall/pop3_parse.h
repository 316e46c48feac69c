/* POP3 command-line parsing: the verb, message numbers, TOP's line count
 * and the base64 of AUTH PLAIN. Pure functions, no I/O, so they can be
 * unit-tested on their own. */
#ifndef BMX_POP3_PARSE_H
#define BMX_POP3_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest command line accepted, CRLF included. RFC 2449 4 allows 255
 * octets; 512 leaves room for an AUTH PLAIN initial response. */
#define POP3_LINE_MAX 512

enum pop3_verb {
    P3_UNKNOWN = 0, P3_CAPA, P3_STLS, P3_USER, P3_PASS, P3_AUTH,
    P3_STAT, P3_LIST, P3_UIDL, P3_RETR, P3_TOP, P3_DELE, P3_NOOP,
    P3_RSET, P3_QUIT, P3_COUNT
};

/* Splits LINE (no CRLF) into the verb and its argument: the rest of the
 * line after the one space that follows the verb, "" when there is none.
 * PASS keeps spaces in the password (RFC 1939 7), so nothing more is
 * skipped here. LAST, UTF8, APOP and anything else are P3_UNKNOWN. */
enum pop3_verb pop3_parse_verb(const char *line, const char **args);
const char *pop3_verb_name(enum pop3_verb v);

/* A message number "n" (decimal, 1 or more) alone in ARGS, spaces around
 * it allowed. False on anything else, including 0 and overflow. */
bool pop3_parse_msgno(const char *args, unsigned long *n);

/* TOP's "n m": m may be huge (fetchmail sends 99999999); a value past
 * UINT64_MAX is clamped, since it means "the whole body" either way. */
bool pop3_parse_top(const char *args, unsigned long *n, uint64_t *lines);

/* Strict base64 (RFC 4648, padded, no whitespace) of IN (LEN bytes) into
 * OUT, which must hold 3 * LEN / 4 bytes. Returns the decoded length, or
 * -1 if IN is not valid base64. "=" alone decodes to the empty string
 * (RFC 5034 4: an empty initial response). */
long pop3_b64decode(const char *in, size_t len, unsigned char *out);

#endif
