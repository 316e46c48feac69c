/* libFuzzer target: addr_parse_path() (lib/addr.c), the RFC 5321 path
 * parser behind MAIL FROM and RCPT TO, and utf8_valid().
 *
 * Input: byte 0 selects allow_null (bit 0); the rest, up to the first NUL,
 * is the text after "MAIL FROM:" / "RCPT TO:" as the session passes it.
 *
 * Checked beyond memory safety: a parsed address (ADDR_OK or ADDR_ROUTING)
 * is within the RFC 5321 4.5.3.1 limits, *end points just past a '>' inside
 * the input, the domain is lower case with no empty label and no trailing
 * dot, full == local "@" domain, no control character or space outside a
 * quoted local part (the address is copied into Received: and DSN headers),
 * nonascii is right and then the address is valid UTF-8. utf8_valid() is
 * compared with an independent decoder. */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "addr.h"
#include "fuzz_util.h"

/* Reference: well-formed UTF-8 (RFC 3629): no overlongs, no surrogates,
 * nothing above U+10FFFF, no truncated sequence. */
static bool ref_utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char lo = 0x80, hi = 0xbf;   /* bounds of the 2nd byte */
        if (c >= 0xc2 && c <= 0xdf)
            need = 1;
        else if (c == 0xe0)
            need = 2, lo = 0xa0;
        else if (c >= 0xe1 && c <= 0xec)
            need = 2;
        else if (c == 0xed)
            need = 2, hi = 0x9f;
        else if (c >= 0xee && c <= 0xef)
            need = 2;
        else if (c == 0xf0)
            need = 3, lo = 0x90;
        else if (c >= 0xf1 && c <= 0xf3)
            need = 3;
        else if (c == 0xf4)
            need = 3, hi = 0x8f;
        else
            return false;
        if (len - i - 1 < need)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += need + 1;
    }
    return true;
}

static void check_addr(const char *s, bool allow_null, enum addr_status st,
                       const struct mailaddr *a, const char *end)
{
    size_t slen = strlen(s);
    FUZZ_CHECK(end != NULL && end > s && end <= s + slen, "end out of the input");
    FUZZ_CHECK(end[-1] == '>', "end not just past '>'");
    FUZZ_CHECK(memchr(a->local, 0, sizeof a->local) != NULL &&
               memchr(a->domain, 0, sizeof a->domain) != NULL &&
               memchr(a->full, 0, sizeof a->full) != NULL, "unterminated field");
    if (a->null) {
        FUZZ_CHECK(allow_null && st == ADDR_OK, "null path: status %d", st);
        FUZZ_CHECK(a->full[0] == '\0' && a->local[0] == '\0' && a->domain[0] == '\0',
                   "null path with an address '%s'", a->full);
        FUZZ_CHECK(end == s + 2, "<> with end at %td", end - s);
        return;
    }
    size_t ll = strlen(a->local), dl = strlen(a->domain), fl = strlen(a->full);
    FUZZ_CHECK(ll >= 1 && ll <= ADDR_LOCAL_MAX, "local part of %zu octets", ll);
    FUZZ_CHECK(dl >= 1 && dl <= ADDR_DOMAIN_MAX, "domain of %zu octets", dl);
    FUZZ_CHECK(fl + 2 <= ADDR_PATH_MAX, "path of %zu octets", fl + 2);
    FUZZ_CHECK(fl == ll + 1 + dl && memcmp(a->full, a->local, ll) == 0 &&
               a->full[ll] == '@' && strcmp(a->full + ll + 1, a->domain) == 0,
               "full '%s' is not local '%s' @ domain '%s'", a->full, a->local,
               a->domain);
    bool quoted = a->local[0] == '"';
    if (quoted)
        FUZZ_CHECK(ll >= 2 && a->local[ll - 1] == '"', "unbalanced quotes '%s'",
                   a->local);
    bool nonascii = false;
    for (size_t i = 0; i < fl; i++) {
        unsigned char c = (unsigned char)a->full[i];
        if (c >= 0x80)
            nonascii = true;
        FUZZ_CHECK(c >= 0x20 && c != 0x7f, "control octet 0x%02x in '%s'", c, a->full);
        FUZZ_CHECK(c != ' ' || (quoted && i < ll), "space outside a quoted "
                   "local part in '%s'", a->full);
        /* RFC 5321 dcontent allows '<', '>' and '"' in a general literal. */
        if (!(quoted && i < ll) && !(a->literal && i > ll))
            FUZZ_CHECK(c != '<' && c != '>' && c != '"' && c != '\\',
                       "octet '%c' outside a quoted local part in '%s'", c, a->full);
    }
    FUZZ_CHECK(nonascii == a->nonascii, "nonascii=%d for '%s'", a->nonascii, a->full);
    if (nonascii)
        FUZZ_CHECK(ref_utf8_valid((const unsigned char *)a->full, fl),
                   "invalid UTF-8 accepted: '%s'", a->full);
    for (size_t i = 0; i < dl; i++)
        FUZZ_CHECK(!(a->domain[i] >= 'A' && a->domain[i] <= 'Z'),
                   "upper case in domain '%s'", a->domain);
    if (a->literal) {
        FUZZ_CHECK(a->domain[0] == '[' && a->domain[dl - 1] == ']',
                   "literal '%s'", a->domain);
    } else {
        FUZZ_CHECK(a->domain[0] != '.' && a->domain[dl - 1] != '.' &&
                   strstr(a->domain, "..") == NULL, "empty label in '%s'", a->domain);
        for (const char *lab = a->domain; *lab;) {
            size_t n = strcspn(lab, ".");
            FUZZ_CHECK(n <= 63, "label of %zu octets in '%s'", n, a->domain);
            FUZZ_CHECK(lab[0] != '-' && lab[n - 1] != '-', "hyphen at a label end "
                       "in '%s'", a->domain);
            lab += n + (lab[n] == '.');
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool allow_null = data[0] & 1;
    char *s = fuzz_strndup(data + 1, size - 1);

    struct mailaddr a;
    const char *end = NULL;
    enum addr_status st = addr_parse_path(s, allow_null, &a, &end);
    FUZZ_CHECK(st >= ADDR_OK && st <= ADDR_ROUTING, "status %d", st);
    if (st == ADDR_OK || st == ADDR_ROUTING)
        check_addr(s, allow_null, st, &a, end);
    if (s[0] != '<')
        FUZZ_CHECK(st == ADDR_SYNTAX, "no '<' but status %d", st);

    /* The parse must not depend on allow_null except for "<>". */
    struct mailaddr b;
    const char *end2 = NULL;
    enum addr_status st2 = addr_parse_path(s, !allow_null, &b, &end2);
    if (strncmp(s, "<>", 2) != 0)
        FUZZ_CHECK(st2 == st && (st != ADDR_OK || strcmp(a.full, b.full) == 0),
                   "allow_null changes the result: %d vs %d", st, st2);

    size_t n = size - 1;
    FUZZ_CHECK(utf8_valid(data + 1, n) == ref_utf8_valid(data + 1, n),
               "utf8_valid() says %d, the reference %d",
               utf8_valid(data + 1, n), !utf8_valid(data + 1, n));

    char *low = fuzz_strndup(data + 1, n);
    addr_lower(low);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = data[1 + i];
        unsigned char want = (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
        if (c == 0)
            break;
        FUZZ_CHECK((unsigned char)low[i] == want, "addr_lower at %zu", i);
    }
    free(low);
    free(s);
    return 0;
}
