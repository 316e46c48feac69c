/* IMAP4rev1 command syntax (RFC 3501 section 9): tags, atoms, strings,
 * literals, sequence sets, FETCH attributes and SEARCH keys. Pure functions
 * over one complete command, no I/O, so they can be unit-tested and fuzzed.
 *
 * A complete command is what the session assembled from the wire: the
 * command line(s) without the final CRLF, where every synchronizing literal
 * appears as "{n}\r\n" followed by its N bytes (the session sent the "+"
 * continuation in between). Everything the parser returns lives in its
 * arena until imap_parser_free(). */
#ifndef BMX_IMAP_PARSE_H
#define BMX_IMAP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define IMAP_LINE_MAX 8192          /* one line of a command, CRLF excluded */
#define IMAP_LITERAL_MAX 65536      /* one literal inside a command */
#define IMAP_COMMAND_MAX (2 * IMAP_LITERAL_MAX) /* lines and literals together */
#define IMAP_TAG_MAX 64
#define IMAP_FETCH_ATT_MAX 32       /* items in one FETCH */
#define IMAP_FIELDS_MAX 64          /* names in one HEADER.FIELDS list */
#define IMAP_FIELD_NAME_MAX 128     /* bytes in one of those names */
/* Room for any name imap_fetch_att_name() writes: every field quoted with
 * every byte escaped, plus the rest. */
#define IMAP_ATT_NAME_MAX (IMAP_FIELDS_MAX * (2 * IMAP_FIELD_NAME_MAX + 3) + 128)
#define IMAP_PART_MAX 8             /* depth of a section part "1.2.3" */
#define IMAP_SEARCH_DEPTH 32        /* nesting of NOT/OR/parentheses */

/* ---- the parser ------------------------------------------------------- */

struct imap_arena_chunk;

struct imap_parser {
    const char *p, *end;
    const char *error;              /* first syntax error, static text */
    struct imap_arena_chunk *arena;
};

void imap_parser_init(struct imap_parser *ps, const char *cmd, size_t len);
void imap_parser_free(struct imap_parser *ps);
/* LEN bytes from the arena, aligned for any struct; NULL if out of memory
 * (which also sets the error). */
void *imap_alloc(struct imap_parser *ps, size_t len);

/* A string argument. S is NUL-terminated in the arena; strings with a NUL
 * byte inside are refused by every parser below. */
struct imap_str {
    const char *s;
    size_t len;
};

bool imap_tag(struct imap_parser *ps, const char **tag);
/* A command name or other atom, upper-cased. */
bool imap_atom_upper(struct imap_parser *ps, const char **atom);
bool imap_sp(struct imap_parser *ps);
bool imap_eol(struct imap_parser *ps);
/* Consumes C if it is next. */
bool imap_take(struct imap_parser *ps, char c);
/* Consumes C, or fails. */
bool imap_expect(struct imap_parser *ps, char c);
bool imap_at_eol(const struct imap_parser *ps);
/* astring: atom (with ']'), quoted string or literal. */
bool imap_astring(struct imap_parser *ps, struct imap_str *out);
/* string: quoted string or literal. */
bool imap_string(struct imap_parser *ps, struct imap_str *out);
/* list-mailbox: like astring, but also '%' and '*' in the atom form. */
bool imap_list_mailbox(struct imap_parser *ps, struct imap_str *out);
bool imap_number(struct imap_parser *ps, uint32_t *n);

/* ---- sequence sets ---------------------------------------------------- */

#define IMAP_STAR 0u                /* '*': no message has number 0 */

struct imap_range {
    uint32_t lo, hi;                /* as written; either may be IMAP_STAR */
};

struct imap_seqset {
    struct imap_range *r;
    size_t n;
};

bool imap_seqset(struct imap_parser *ps, struct imap_seqset *set);
/* Whether V is in SET, '*' standing for STAR (the largest number in use;
 * 0 for an empty mailbox, which then matches nothing). */
bool imap_seqset_contains(const struct imap_seqset *set, uint32_t v, uint32_t star);
/* The largest number written in SET other than '*' (0 if none). */
uint32_t imap_seqset_max(const struct imap_seqset *set);

/* ---- flags ------------------------------------------------------------ */

/* A flag list "(\Seen \Deleted)" or, as STORE allows, flags without
 * parentheses. System flags become MF_* bits; keywords are accepted and
 * counted in *KEYWORDS (they cannot be stored). \Recent is refused. */
bool imap_flag_list(struct imap_parser *ps, unsigned *flags, unsigned *keywords);

/* ---- FETCH ------------------------------------------------------------ */

enum imap_fetch_kind {
    FA_FLAGS, FA_UID, FA_RFC822_SIZE, FA_INTERNALDATE, FA_ENVELOPE,
    FA_BODYSTRUCTURE, FA_BODY,      /* BODY without a section: the structure */
    FA_RFC822, FA_RFC822_HEADER, FA_RFC822_TEXT,
    FA_SECTION,                     /* BODY[...] and BODY.PEEK[...] */
};

enum imap_section {
    SEC_ALL,                        /* BODY[] or BODY[1] */
    SEC_HEADER, SEC_TEXT, SEC_FIELDS, SEC_FIELDS_NOT, SEC_MIME,
};

struct imap_fetch_att {
    enum imap_fetch_kind kind;
    bool peek;                      /* BODY.PEEK: leaves \Seen alone */
    enum imap_section sec;
    uint32_t part[IMAP_PART_MAX];   /* section part "1.2" */
    size_t nparts;
    const char **fields;            /* HEADER.FIELDS names, upper-cased */
    size_t nfields;
    bool partial;                   /* <off.len> */
    uint32_t off, len;
};

struct imap_fetch_req {
    struct imap_fetch_att att[IMAP_FETCH_ATT_MAX];
    size_t n;
};

/* A fetch-att, a parenthesized list of them, or a macro (ALL, FAST,
 * FULL). Duplicates are kept. */
bool imap_fetch_atts(struct imap_parser *ps, struct imap_fetch_req *req);
/* Writes the name of ATT as it appears in a response ("BODY[TEXT]<0>",
 * "RFC822.SIZE"), NUL-terminated, into BUF; returns its length, or 0 if
 * it does not fit. */
size_t imap_fetch_att_name(const struct imap_fetch_att *att, char *buf, size_t size);

/* ---- SEARCH ----------------------------------------------------------- */

enum imap_skey {
    SK_AND,                         /* kids: implicit AND, parentheses */
    SK_OR, SK_NOT,
    SK_ALL, SK_ANSWERED, SK_DELETED, SK_DRAFT, SK_FLAGGED, SK_SEEN,
    SK_UNANSWERED, SK_UNDELETED, SK_UNDRAFT, SK_UNFLAGGED, SK_UNSEEN,
    SK_NEW, SK_OLD, SK_RECENT,
    SK_KEYWORD, SK_UNKEYWORD,       /* no keywords are stored */
    SK_LARGER, SK_SMALLER,          /* num */
    SK_UID, SK_SEQ,                 /* set */
    SK_BEFORE, SK_ON, SK_SINCE,     /* date, on INTERNALDATE */
    SK_SENTBEFORE, SK_SENTON, SK_SENTSINCE, /* date, on the Date: header */
    SK_HEADER,                      /* field, str (FROM, TO, CC, BCC, SUBJECT too) */
    SK_BODY, SK_TEXT,               /* str */
};

struct imap_search_key {
    enum imap_skey type;
    struct imap_search_key *kids;   /* AND: all; OR: two; NOT: one */
    struct imap_search_key *next;   /* sibling */
    uint64_t num;
    struct imap_seqset set;
    time_t day;                     /* a date as 00:00 UTC of that day */
    const char *field;              /* HEADER field name */
    struct imap_str str;
};

/* The whole key list of SEARCH after the optional "CHARSET x" (which the
 * caller parses): an SK_AND node. */
bool imap_search_keys(struct imap_parser *ps, struct imap_search_key **root);

/* ---- framing, for the session ----------------------------------------- */

/* If LINE (LEN bytes, no line end) ends with a literal marker "{n}",
 * returns n (> IMAP_LITERAL_MAX is returned as is: the caller refuses it).
 * -1 if it does not; -2 for a non-synchronizing "{n+}" or a number that
 * overflows. */
long long imap_line_literal(const char *line, size_t len);

/* The tag at the start of LINE copied into TAG (size IMAP_TAG_MAX + 1),
 * "*" if there is no valid one: for errors found before parsing. */
void imap_peek_tag(const char *line, size_t len, char *tag);

/* "d-Mon-yyyy" (SEARCH dates) to 00:00 UTC of that day. */
bool imap_parse_date(const char *s, time_t *day);

#endif
