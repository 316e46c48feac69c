/* SMTP command-line parsing (RFC 5321 4.1.1, 1870 SIZE, 6152 8BITMIME,
 * 6531 SMTPUTF8). */
#include "smtp_parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const verb_names[CMD_COUNT] = {
    [CMD_UNKNOWN] = "unknown", [CMD_HELO] = "helo", [CMD_EHLO] = "ehlo",
    [CMD_MAIL] = "mail", [CMD_RCPT] = "rcpt", [CMD_DATA] = "data",
    [CMD_RSET] = "rset", [CMD_NOOP] = "noop", [CMD_QUIT] = "quit",
    [CMD_HELP] = "help", [CMD_VRFY] = "vrfy", [CMD_EXPN] = "expn",
    [CMD_STARTTLS] = "starttls", [CMD_ETRN] = "etrn",
};

const char *smtp_verb_name(enum smtp_verb v)
{
    return (v >= 0 && v < CMD_COUNT) ? verb_names[v] : "unknown";
}

enum smtp_verb smtp_parse_verb(const char *line, const char **args)
{
    size_t n = 0;
    while (isalpha((unsigned char)line[n]))
        n++;
    const char *rest = line + n;
    if (*rest != '\0' && *rest != ' ') {
        *args = "";
        return CMD_UNKNOWN;
    }
    while (*rest == ' ')
        rest++;
    *args = rest;
    for (int v = 1; v < CMD_COUNT; v++)
        if (strlen(verb_names[v]) == n && strncasecmp(line, verb_names[v], n) == 0)
            return (enum smtp_verb)v;
    return CMD_UNKNOWN;
}

/* One "KEYWORD[=VALUE]" parameter; KW and VAL point into a copy. */
static enum param_status apply_param(char *kw, char *val, bool is_mail,
                                     struct smtp_params *p)
{
    if (!is_mail)
        return PARAM_UNKNOWN;    /* no RCPT parameters are offered */
    if (strcasecmp(kw, "SIZE") == 0) {
        if (val == NULL || !isdigit((unsigned char)*val) || strlen(val) > 20)
            return PARAM_BAD_VALUE;
        errno = 0;
        char *end;
        unsigned long long v = strtoull(val, &end, 10);
        if (*end != '\0' || errno != 0)
            return PARAM_BAD_VALUE;
        p->size_set = true;
        p->size = v;
        return PARAM_OK;
    }
    if (strcasecmp(kw, "BODY") == 0) {
        if (val != NULL && strcasecmp(val, "7BIT") == 0)
            p->body = BODY_7BIT;
        else if (val != NULL && strcasecmp(val, "8BITMIME") == 0)
            p->body = BODY_8BITMIME;
        else
            return PARAM_BAD_VALUE;
        return PARAM_OK;
    }
    if (strcasecmp(kw, "SMTPUTF8") == 0) {
        if (val != NULL)
            return PARAM_BAD_VALUE;
        p->smtputf8 = true;
        return PARAM_OK;
    }
    return PARAM_UNKNOWN;
}

static enum param_status parse_params(const char *s, bool is_mail,
                                      struct smtp_params *p, const char **bad)
{
    char buf[512];
    while (*s == ' ')
        s++;
    while (*s != '\0') {
        const char *start = s;
        size_t n = strcspn(s, " ");
        *bad = start;
        if (n >= sizeof buf)
            return PARAM_BAD_VALUE;
        memcpy(buf, s, n);
        buf[n] = '\0';
        char *val = strchr(buf, '=');
        if (val != NULL)
            *val++ = '\0';
        if (buf[0] == '\0')
            return PARAM_BAD_VALUE;
        enum param_status st = apply_param(buf, val, is_mail, p);
        if (st != PARAM_OK)
            return st;
        s += n;
        while (*s == ' ')
            s++;
    }
    return PARAM_OK;
}

enum param_status smtp_parse_path_args(const char *args, bool is_mail,
                                       struct mailaddr *a,
                                       struct smtp_params *p,
                                       const char **bad)
{
    const char *kw = is_mail ? "FROM:" : "TO:";
    size_t kwlen = strlen(kw);
    memset(p, 0, sizeof *p);
    *bad = args;
    if (strncasecmp(args, kw, kwlen) != 0)
        return PARAM_NOPATH;
    const char *s = args + kwlen;
    while (*s == ' ')            /* tolerated, as most MTAs do */
        s++;
    if (*s != '<')
        return PARAM_NOPATH;
    const char *end = NULL;
    enum addr_status st = addr_parse_path(s, is_mail, a, &end);
    if (st == ADDR_SYNTAX)
        return PARAM_ADDR_SYNTAX;
    if (st == ADDR_TOOLONG)
        return PARAM_ADDR_TOOLONG;
    if (*end != '\0' && *end != ' ')
        return PARAM_ADDR_SYNTAX;
    enum param_status ps = parse_params(end, is_mail, p, bad);
    if (ps != PARAM_OK)
        return ps;
    return st == ADDR_ROUTING ? PARAM_ROUTING : PARAM_OK;
}
