/* SMTP command-line parsing: the verb, and the MAIL/RCPT arguments with their
 * ESMTP parameters. Pure functions, no I/O, so they can be unit-tested and
 * fuzzed on their own. */
#ifndef BMX_SMTP_PARSE_H
#define BMX_SMTP_PARSE_H

#include <stdbool.h>
#include <stdint.h>

#include "addr.h"

enum smtp_verb {
    CMD_UNKNOWN = 0, CMD_HELO, CMD_EHLO, CMD_MAIL, CMD_RCPT, CMD_DATA,
    CMD_RSET, CMD_NOOP, CMD_QUIT, CMD_HELP, CMD_VRFY, CMD_EXPN,
    CMD_STARTTLS, CMD_ETRN, CMD_COUNT
};

/* Splits LINE (no CRLF) into verb and argument (leading spaces skipped;
 * "" when there is none). */
enum smtp_verb smtp_parse_verb(const char *line, const char **args);
const char *smtp_verb_name(enum smtp_verb v);

enum body_type { BODY_UNSET = 0, BODY_7BIT, BODY_8BITMIME };

struct smtp_params {
    bool size_set;
    uint64_t size;
    enum body_type body;
    bool smtputf8;
};

enum param_status {
    PARAM_OK = 0,
    PARAM_NOPATH,                /* "FROM:"/"TO:" missing or no '<' */
    PARAM_ADDR_SYNTAX,           /* the path does not parse */
    PARAM_ADDR_TOOLONG,
    PARAM_ROUTING,               /* sender-specified routing */
    PARAM_BAD_VALUE,             /* a known parameter with a bad value */
    PARAM_UNKNOWN,               /* an unsupported parameter */
};

/* "FROM:<path> [params]" for MAIL (IS_MAIL) or "TO:<path> [params]" for
 * RCPT. On PARAM_UNKNOWN/PARAM_BAD_VALUE, *bad points at the parameter. */
enum param_status smtp_parse_path_args(const char *args, bool is_mail,
                                       struct mailaddr *a,
                                       struct smtp_params *p,
                                       const char **bad);

#endif
