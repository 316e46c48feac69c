/* libFuzzer target: the SMTP command line parsers of backupmx/smtp_parse.c,
 * smtp_parse_verb() and smtp_parse_path_args() (with lib/addr.c below).
 *
 * Input: one command line without its CRLF, as read_command_line() hands it
 * to dispatch() (at most CMD_LINE_MAX octets; the session refuses lines with
 * a CR or a NUL, the target cuts at the first NUL). Every line goes through
 * the verb parser and, whatever the verb, through the MAIL and the RCPT
 * argument parsers, which must cope with anything.
 *
 * Checked: the argument pointer lies in the line, past the verb, at a
 * non-space; a known verb matches its name case-insensitively; *bad lies in
 * the arguments; a parsed path has sane lengths; SIZE/BODY/SMTPUTF8 are only
 * set by MAIL; RCPT never accepts parameters. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "addr.h"
#include "fuzz_util.h"
#include "smtp_parse.h"

#define CMD_LINE_MAX 4096        /* as in backupmx/smtp_session.c */

static void check_path_args(const char *args, bool is_mail)
{
    struct mailaddr a;
    struct smtp_params p;
    const char *bad = NULL;
    enum param_status st = smtp_parse_path_args(args, is_mail, &a, &p, &bad);
    size_t alen = strlen(args);
    FUZZ_CHECK(st >= PARAM_OK && st <= PARAM_UNKNOWN, "status %d", st);
    FUZZ_CHECK(bad != NULL && bad >= args && bad <= args + alen,
               "*bad outside the arguments");
    if (st == PARAM_UNKNOWN || st == PARAM_BAD_VALUE)
        FUZZ_CHECK(*bad != '\0' && *bad != ' ', "*bad does not point at a parameter");
    if (!is_mail) {
        FUZZ_CHECK(!p.size_set && p.body == BODY_UNSET && !p.smtputf8,
                   "RCPT set a MAIL parameter");
        FUZZ_CHECK(!(st == PARAM_OK && a.null), "RCPT TO:<> accepted");
    }
    if (st == PARAM_OK || st == PARAM_ROUTING) {
        FUZZ_CHECK(memchr(a.full, 0, sizeof a.full) != NULL, "unterminated address");
        size_t fl = strlen(a.full);
        FUZZ_CHECK(a.null ? fl == 0 : (fl >= 3 && fl + 2 <= ADDR_PATH_MAX),
                   "address '%s' of %zu octets", a.full, fl);
        FUZZ_CHECK(strncasecmp(args, is_mail ? "FROM:" : "TO:", is_mail ? 5 : 3) == 0,
                   "parsed without the FROM:/TO: keyword");
        if (p.size_set)
            FUZZ_CHECK(strcasestr(args, "SIZE=") != NULL, "SIZE set from nothing");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > CMD_LINE_MAX)
        size = CMD_LINE_MAX;
    char *line = fuzz_strndup(data, size);
    size_t len = strlen(line);

    const char *args = NULL;
    enum smtp_verb v = smtp_parse_verb(line, &args);
    FUZZ_CHECK(v >= CMD_UNKNOWN && v < CMD_COUNT, "verb %d", v);
    FUZZ_CHECK(args != NULL, "args not set");
    const char *name = smtp_verb_name(v);
    FUZZ_CHECK(name != NULL && *name != '\0', "no name for verb %d", v);
    if (v != CMD_UNKNOWN) {
        size_t n = strlen(name);
        FUZZ_CHECK(strncasecmp(line, name, n) == 0 &&
                   (line[n] == '\0' || line[n] == ' '),
                   "'%s' parsed as %s", line, name);
        FUZZ_CHECK(args >= line + n && args <= line + len && *args != ' ',
                   "arguments of '%s' at offset %td", line, args - line);
    } else {
        /* "" for garbage, or the text after the (unknown) word. */
        FUZZ_CHECK(*args == '\0' || (args > line && args <= line + len),
                   "arguments of an unknown command outside the line");
    }
    check_path_args(args, true);
    check_path_args(args, false);
    free(line);
    return 0;
}
