/* libFuzzer target: fetchd's multidrop routing (fetchd/multidrop.c), which
 * reads the envelope from headers of mail pulled off a shared mailbox:
 * anything in them came from the network.
 *
 * Input: the message (header and body), CRLF or LF lines, NULs included.
 *
 * Checked: md_route always routes somewhere (postmaster at worst); every
 * recipient and the sender are single addresses fit for an SMTP command:
 * no CR, LF, NUL, space or angle bracket, and recipients are in a local
 * domain or the postmaster; md_header gives an unfolded value (no line
 * end); md_addresses gives addr-specs with one '@'. */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "multidrop.h"

static void check_smtp_safe(const char *what, const char *s)
{
    for (const char *p = s; *p; p++)
        FUZZ_CHECK(*p != '\r' && *p != '\n' && *p != ' ' && *p != '<' && *p != '>'
                   && *p != '\t', "%s '%s' has a byte unfit for SMTP", what, s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *const local[] = { "example.org", "catch.test" };
    struct md_rules r = { .header = "X-Original-To", .localdomains = local, .nlocal = 2,
                          .postmaster = "postmaster@example.org" };
    const char *msg = (const char *)data;
    struct md_route rt;
    memset(&rt, 0, sizeof rt);
    if (md_route(msg, size, &r, &rt) != 0)
        return 0;               /* out of memory */
    FUZZ_CHECK(rt.nrcpts >= 1, "routed to nobody (source %s)", rt.source);
    FUZZ_CHECK(rt.sender != NULL, "no sender");
    check_smtp_safe("sender", rt.sender);
    for (size_t i = 0; i < rt.nrcpts; i++) {
        const char *a = rt.rcpts[i];
        check_smtp_safe("recipient", a);
        const char *at = strrchr(a, '@');
        FUZZ_CHECK(at != NULL && (strcmp(at + 1, "example.org") == 0
                                  || strcmp(at + 1, "catch.test") == 0),
                   "recipient '%s' outside the local domains", a);
    }
    md_route_free(&rt);
    char *v = md_header(msg, size, "To");
    if (v != NULL) {
        FUZZ_CHECK(strchr(v, '\n') == NULL && strchr(v, '\r') == NULL, "folded value '%s'", v);
        char **list = NULL;
        size_t n = md_addresses(v, &list);
        for (size_t i = 0; i < n; i++) {
            check_smtp_safe("address", list[i]);
            const char *at = strchr(list[i], '@');
            FUZZ_CHECK(at != NULL && strchr(at + 1, '@') == NULL, "address '%s'", list[i]);
        }
        md_free_list(list, n);
        free(v);
    }
    return 0;
}
