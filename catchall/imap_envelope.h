/* RFC 5322 header blocks as IMAP sees them: ENVELOPE (RFC 3501 7.4.2),
 * HEADER.FIELDS subsets, the Date: day for SENT* searches, and IMAP string
 * output. Pure functions over a header in memory, so they can be unit-
 * tested; the FETCH code reads the header and calls them.
 *
 * Addresses are parsed here rather than with libetpan's mailimf, which
 * keeps comments in display names, reads "foo bar" as the address
 * "foobar" and stops at an empty list element: the parser below is
 * lenient, skips what it cannot read and never reads past LEN. */
#ifndef BMX_IMAP_ENVELOPE_H
#define BMX_IMAP_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct evbuffer;

/* Strings longer than this, or with CR, LF, NUL or 8-bit bytes, are sent
 * as literals. */
#define IMAP_QUOTED_MAX 1024

/* An IMAP string: quoted when possible, else a literal. */
void imap_put_string(struct evbuffer *out, const char *s, size_t len);
/* NIL when S is NULL. */
void imap_put_nstring(struct evbuffer *out, const char *s, size_t len);

/* The unfolded value of the first NAME field of HDR (LEN bytes), trimmed;
 * malloc'd and NUL-terminated (NUL bytes inside become spaces), or NULL
 * if there is no such field (or memory ran out). */
char *imap_header_value(const char *hdr, size_t len, const char *name);

/* Appends the ENVELOPE structure of the header HDR. */
void imap_envelope(struct evbuffer *out, const char *hdr, size_t len);

/* Appends an address-list value (unfolded) as an IMAP list of addresses,
 * or NIL when it holds none. Returns the number of addresses written. */
size_t imap_address_list(struct evbuffer *out, const char *value);

/* Appends the fields of HDR whose names are (NOT: are not) among NAMES
 * (case-insensitive), as they are, then the blank line. */
void imap_header_fields(struct evbuffer *out, const char *hdr, size_t len,
                        const char *const *names, size_t n, bool not);

/* Whether a NAME field of HDR contains STR in its (unfolded) value; an
 * empty STR matches any NAME field (SEARCH HEADER, RFC 3501 6.4.4). */
bool imap_header_search(const char *hdr, size_t len, const char *name,
                        const char *str, size_t slen);

/* The day of HDR's Date: field, as 00:00 UTC (time and zone ignored). */
bool imap_header_day(const char *hdr, size_t len, time_t *day);

/* What BODY/BODYSTRUCTURE can describe: a single text part (which has a
 * line count), another single part, or a multipart or message/rfc822 body
 * (nested structures, not supported). */
enum { BODY_TEXT, BODY_OTHER, BODY_UNSUPPORTED };
int imap_body_kind(const char *hdr, size_t len);

/* Appends the BODY (EXTENDED: BODYSTRUCTURE) of a single-part message with
 * header HDR, a body of SIZE bytes and LINES lines (text only). */
void imap_body_structure(struct evbuffer *out, const char *hdr, size_t len, uint64_t size,
                         uint64_t lines, bool extended);

/* Case-insensitive (ASCII) search for NEEDLE in HAY. */
bool imap_contains(const char *hay, size_t hlen, const char *needle, size_t nlen);

#endif
