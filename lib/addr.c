/* RFC 5321 section 4.1.2 path grammar, with RFC 6531 UTF-8 extensions. */
#include "addr.h"

#include <ctype.h>
#include <string.h>

void addr_lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s - 'A' + 'a');
}

bool utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned min;
        unsigned cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (len - i <= n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        /* Overlong forms, surrogates and values past U+10FFFF are invalid. */
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

static bool is_atext(unsigned char c)
{
    if (c >= 0x80)
        return true;             /* UTF-8; checked for SMTPUTF8 later */
    if (isalnum(c))
        return true;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static bool is_letdig(unsigned char c)
{
    return isalnum(c) || c >= 0x80;
}

/* sub-domain *("." sub-domain), optionally one trailing dot. Returns the
 * length consumed, 0 on a syntax error. */
static size_t scan_domain(const char *s)
{
    size_t i = 0;
    for (;;) {
        size_t start = i;
        if (!is_letdig((unsigned char)s[i]))
            return 0;
        while (is_letdig((unsigned char)s[i]) || s[i] == '-')
            i++;
        if (s[i - 1] == '-' || i - start > 63)
            return 0;
        if (s[i] != '.')
            return i;
        i++;
        if (!is_letdig((unsigned char)s[i]))
            return i;            /* trailing dot: normalised away by caller */
    }
}

/* "[" ... "]": IPv4, "IPv6:..." or a general literal; syntax only, since
 * the policy refuses literals anyway (they are never one of our domains). */
static size_t scan_literal(const char *s)
{
    size_t i = 1;
    while (s[i] != '\0' && s[i] != ']' && s[i] != '[' && s[i] != '\\'
           && (unsigned char)s[i] > 32 && (unsigned char)s[i] < 127)
        i++;
    if (s[i] != ']' || i == 1)
        return 0;
    return i + 1;
}

/* Dot-string or Quoted-string. Sets *routing for '%', '!' or '@' inside. */
static size_t scan_local(const char *s, bool *routing)
{
    size_t i = 0;
    if (s[0] == '"') {
        i = 1;
        for (;;) {
            unsigned char c = (unsigned char)s[i];
            if (c == '"')
                return i + 1;
            if (c == '\\') {
                unsigned char q = (unsigned char)s[i + 1];
                if (q < 32 || q > 126)
                    return 0;
                if (q == '@' || q == '%' || q == '!')
                    *routing = true;
                i += 2;
                continue;
            }
            if (c < 32 || c == 127)
                return 0;
            if (c == '@' || c == '%' || c == '!')
                *routing = true;
            i++;
        }
    }
    for (;;) {
        size_t start = i;
        while (is_atext((unsigned char)s[i]))
            i++;
        if (i == start)
            return 0;
        if (s[i] != '.')
            break;
        i++;
    }
    for (size_t k = 0; k < i; k++)
        if (s[k] == '%' || s[k] == '!')
            *routing = true;
    return i;
}

/* A-d-l ":" — a source route; consumed only to be refused. */
static size_t scan_adl(const char *s)
{
    size_t i = 0;
    for (;;) {
        if (s[i] != '@')
            return 0;
        size_t n = scan_domain(s + i + 1);
        if (n == 0)
            return 0;
        i += 1 + n;
        if (s[i] == ':')
            return i + 1;
        if (s[i] != ',')
            return 0;
        i++;
    }
}

static enum addr_status fill(struct mailaddr *a, const char *local,
                             size_t llen, const char *dom, size_t dlen)
{
    if (dlen > 0 && dom[dlen - 1] == '.')
        dlen--;
    if (llen > ADDR_LOCAL_MAX || dlen > ADDR_DOMAIN_MAX
        || llen + dlen + 3 > ADDR_PATH_MAX)
        return ADDR_TOOLONG;
    memcpy(a->local, local, llen);
    a->local[llen] = '\0';
    memcpy(a->domain, dom, dlen);
    a->domain[dlen] = '\0';
    addr_lower(a->domain);
    memcpy(a->full, local, llen);
    a->full[llen] = '@';
    memcpy(a->full + llen + 1, a->domain, dlen + 1);
    for (size_t i = 0; a->full[i]; i++)
        if ((unsigned char)a->full[i] >= 0x80)
            a->nonascii = true;
    if (a->nonascii && !utf8_valid((const unsigned char *)a->full, strlen(a->full)))
        return ADDR_SYNTAX;
    return ADDR_OK;
}

enum addr_status addr_parse_path(const char *s, bool allow_null,
                                 struct mailaddr *a, const char **end)
{
    memset(a, 0, sizeof *a);
    if (s[0] != '<')
        return ADDR_SYNTAX;
    if (s[1] == '>') {
        if (!allow_null)
            return ADDR_SYNTAX;
        a->null = true;
        *end = s + 2;
        return ADDR_OK;
    }
    size_t i = 1;
    bool routing = false;
    if (s[i] == '@') {
        size_t n = scan_adl(s + i);
        if (n == 0)
            return ADDR_SYNTAX;
        routing = true;
        i += n;
    }
    const char *local = s + i;
    size_t llen = scan_local(local, &routing);
    if (llen == 0 || local[llen] != '@')
        return ADDR_SYNTAX;
    const char *dom = local + llen + 1;
    size_t dlen;
    if (dom[0] == '[') {
        dlen = scan_literal(dom);
        a->literal = true;
    } else {
        dlen = scan_domain(dom);
    }
    if (dlen == 0)
        return ADDR_SYNTAX;
    /* user@other@ours: a second '@' is a relay attempt, not just bad syntax. */
    if (dom[dlen] == '@') {
        const char *p = dom + dlen;
        while (*p && *p != '>')
            p++;
        if (*p != '>')
            return ADDR_SYNTAX;
        *end = p + 1;
        return fill(a, local, llen, dom, dlen) == ADDR_OK ? ADDR_ROUTING : ADDR_SYNTAX;
    }
    if (dom[dlen] != '>')
        return ADDR_SYNTAX;
    *end = dom + dlen + 1;
    enum addr_status st = fill(a, local, llen, dom, dlen);
    if (st != ADDR_OK)
        return st;
    return routing ? ADDR_ROUTING : ADDR_OK;
}
