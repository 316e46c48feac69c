/* POP3 command-line parsing (RFC 1939 3, RFC 2449 3). */
#include "pop3_parse.h"

#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

static const char *const verb_names[P3_COUNT] = {
    [P3_UNKNOWN] = "UNKNOWN", [P3_CAPA] = "CAPA", [P3_STLS] = "STLS",
    [P3_USER] = "USER", [P3_PASS] = "PASS", [P3_AUTH] = "AUTH",
    [P3_STAT] = "STAT", [P3_LIST] = "LIST", [P3_UIDL] = "UIDL",
    [P3_RETR] = "RETR", [P3_TOP] = "TOP", [P3_DELE] = "DELE",
    [P3_NOOP] = "NOOP", [P3_RSET] = "RSET", [P3_QUIT] = "QUIT",
};

enum pop3_verb pop3_parse_verb(const char *line, const char **args)
{
    size_t n = strcspn(line, " ");
    *args = line[n] == ' ' ? line + n + 1 : line + n;
    for (int v = P3_UNKNOWN + 1; v < P3_COUNT; v++)
        if (strlen(verb_names[v]) == n && strncasecmp(line, verb_names[v], n) == 0)
            return (enum pop3_verb)v;
    return P3_UNKNOWN;
}

const char *pop3_verb_name(enum pop3_verb v)
{
    return v >= 0 && v < P3_COUNT ? verb_names[v] : "UNKNOWN";
}

static const char *skip_spaces(const char *p)
{
    while (*p == ' ')
        p++;
    return p;
}

/* Digits at *P into *V, clamped at MAX; false if there are none. */
static bool parse_number(const char **p, uint64_t max, uint64_t *v)
{
    const char *s = *p;
    uint64_t n = 0;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        n = n > (max - d) / 10 ? max : n * 10 + d;
    }
    *p = s;
    *v = n;
    return true;
}

/* A message number: the clamp makes an absurd one fail the range check
 * later instead of wrapping around to a real message. */
static bool parse_msgno_at(const char **p, unsigned long *n)
{
    uint64_t v;
    if (!parse_number(p, UINT32_MAX, &v) || v == 0 || v == UINT32_MAX)
        return false;
    *n = (unsigned long)v;
    return true;
}

bool pop3_parse_msgno(const char *args, unsigned long *n)
{
    const char *p = skip_spaces(args);
    if (!parse_msgno_at(&p, n))
        return false;
    return *skip_spaces(p) == '\0';
}

bool pop3_parse_top(const char *args, unsigned long *n, uint64_t *lines)
{
    const char *p = skip_spaces(args);
    if (!parse_msgno_at(&p, n) || *p != ' ')
        return false;
    p = skip_spaces(p);
    if (!parse_number(&p, UINT64_MAX, lines))
        return false;
    return *skip_spaces(p) == '\0';
}

static bool b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
           || c == '+' || c == '/';
}

/* EVP_DecodeBlock is lenient (it skips surrounding whitespace, decodes
 * padding as zero bytes): check the exact form first. */
static bool b64_valid(const char *in, size_t len, size_t *pad)
{
    if (len == 0 || len % 4 != 0)
        return false;
    *pad = in[len - 1] == '=' ? (in[len - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < len - *pad; i++)
        if (!b64_char(in[i]))
            return false;
    return true;
}

long pop3_b64decode(const char *in, size_t len, unsigned char *out)
{
    if (len == 1 && in[0] == '=')
        return 0;
    size_t pad;
    if (!b64_valid(in, len, &pad))
        return -1;
    int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
    if (n < 0 || (size_t)n < pad)
        return -1;
    return n - (long)pad;
}
