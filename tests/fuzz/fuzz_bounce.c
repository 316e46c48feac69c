/* libFuzzer target: bounce_build() and bounce_qenv_flags() (backupmx/bounce.c),
 * the DSN (RFC 3464 multipart/report) generator, with arbitrary recipients,
 * replies, names and original headers: everything in a DSN that came from
 * the network.
 *
 * Input layout:
 *   byte 0   bit 0: BOUNCE_DELAYED; bits 1-2: recipients - 1 (1..4);
 *            bit 3: no original message (NULL); bit 4: the time stamps come
 *            from the input (else fixed, realistic ones)
 *   [32 bytes: arrival, now, last_attempt, retry_until, little-endian int64,
 *              when bit 4 is set]
 *   NUL-separated strings: hostname, queue id, sender, helo, client address,
 *   client name, then per recipient: address, ORCPT, status, remote MTA,
 *   diagnostic (missing ones are ""; an empty ORCPT/remote MTA is NULL);
 *   after those, everything left is the original message (NULs included).
 *
 * Checked on the result: CRLF line ends only; no line over 998 octets; no
 * NUL; a header section of well-formed fields (nothing from the input can
 * start a field or end the header); the multipart structure holds (the
 * boundary delimits exactly the parts and nothing inside them); the notice
 * and the delivery-status part are US-ASCII; one Final-Recipient, Action and
 * Status field per recipient; 8-bit octets anywhere imply QENV_8BITMIME from
 * bounce_qenv_flags(); failure (the null sender) leaves OUT untouched. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

#include "bounce.h"
#include "fuzz_util.h"
#include "queue.h"

#define NSTR_ENV 6
#define NSTR_RCPT 5
#define MAX_RCPT 4

struct reader {
    const uint8_t *p;
    size_t n;
};

/* The next NUL-terminated string (a pointer into a copy the caller owns). */
static char *next_str(struct reader *r, char **pool)
{
    const uint8_t *z = memchr(r->p, 0, r->n);
    size_t len = z ? (size_t)(z - r->p) : r->n;
    char *s = fuzz_strndup(r->p, len);
    r->p += len + (z != NULL);
    r->n -= len + (z != NULL);
    *pool = s;
    return s;
}

static int64_t get_i64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return (int64_t)v;
}

static size_t count_lines_starting(const char *p, size_t n, const char *what)
{
    size_t c = 0, wl = strlen(what);
    for (size_t i = 0; i + wl <= n; i++)
        if ((i == 0 || p[i - 1] == '\n') && memcmp(p + i, what, wl) == 0)
            c++;
    return c;
}

/* Lines of [p, p+n) up to the first empty one are header fields: "Name:"
 * with a printable name, or continuations (WSP first), never first. */
static void check_fields(const char *p, size_t n, bool stop_at_empty, const char *where)
{
    size_t i = 0;
    bool first = true;
    while (i < n) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - p) - 1 : n;    /* at the CR */
        size_t len = end - i;
        if (len == 0) {
            if (stop_at_empty)
                return;
            first = true;
            i = end + 2;
            continue;
        }
        if (p[i] == ' ' || p[i] == '\t') {
            FUZZ_CHECK(!first, "%s: continuation line first: '%.*s'", where,
                       (int)len, p + i);
        } else {
            size_t k = 0;
            while (k < len && p[i + k] != ':') {
                unsigned char c = (unsigned char)p[i + k];
                FUZZ_CHECK(c > 32 && c < 127, "%s: not a header field: '%.*s'", where,
                           (int)len, p + i);
                k++;
            }
            FUZZ_CHECK(k > 0 && k < len, "%s: not a header field: '%.*s'", where,
                       (int)len, p + i);
        }
        first = false;
        if (nl == NULL)
            return;
        i = end + 2;
    }
}

static void check_dsn(const char *m, size_t n, size_t nrcpt, bool have_headers)
{
    size_t bare = fuzz_bare_eol((const unsigned char *)m, n);
    FUZZ_CHECK(bare == (size_t)-1, "bare CR/LF at offset %zu: '%.40s'", bare,
               m + (bare > 20 ? bare - 20 : 0));
    size_t longest = fuzz_longest_line((const unsigned char *)m, n);
    FUZZ_CHECK(longest <= 998, "a line of %zu octets", longest);
    FUZZ_CHECK(memchr(m, 0, n) == NULL, "NUL in the DSN");
    FUZZ_CHECK(n >= 2 && m[n - 2] == '\r' && m[n - 1] == '\n', "no final CRLF");

    /* The header section. */
    const char *hend = NULL;
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(m + i, "\r\n\r\n", 4) == 0) {
            hend = m + i + 2;
            break;
        }
    FUZZ_CHECK(hend != NULL, "no end of the header section");
    size_t hl = (size_t)(hend - m);
    check_fields(m, hl, true, "DSN header");
    FUZZ_CHECK(count_lines_starting(m, hl, "From: MAILER-DAEMON@") == 1, "From:");
    FUZZ_CHECK(count_lines_starting(m, hl, "Message-ID: <") == 1, "Message-ID:");
    FUZZ_CHECK(count_lines_starting(m, hl, "To: <") == 1, "To:");
    FUZZ_CHECK(count_lines_starting(m, hl, "Content-Type: multipart/report;") == 1,
               "Content-Type:");

    /* The boundary and the parts. */
    /* Of the Content-Type field: the To: address may hold the same text. */
    static const char ct[] = "\r\nContent-Type: multipart/report; "
                             "report-type=delivery-status;\r\n\tboundary=\"";
    const char *b = memmem(m, hl, ct, sizeof ct - 1);
    FUZZ_CHECK(b != NULL, "no boundary parameter");
    b += sizeof ct - 1;
    const char *bq = memchr(b, '"', hl - (size_t)(b - m));
    FUZZ_CHECK(bq != NULL && bq > b && bq - b < 71, "bad boundary");
    char delim[80];
    int dl = snprintf(delim, sizeof delim, "\r\n--%.*s", (int)(bq - b), b);
    const char *body = hend + 2;
    size_t bl = n - (size_t)(body - m);
    const char *pos[6];
    size_t np = 0;
    for (const char *q = body - 2; np < 6;) {
        q = memmem(q, (size_t)(m + n - q), delim, (size_t)dl);
        if (q == NULL)
            break;
        pos[np++] = q;
        q += dl;
    }
    size_t want = have_headers ? 4 : 3;
    FUZZ_CHECK(np == want, "the boundary occurs %zu times, want %zu", np, want);
    FUZZ_CHECK(m + n - pos[np - 1] == dl + 4 &&
               memcmp(pos[np - 1] + dl, "--\r\n", 4) == 0,
               "the message does not end with the closing delimiter");
    for (size_t k = 0; k + 1 < np; k++) {
        const char *ps = pos[k] + dl, *pe = pos[k + 1];
        FUZZ_CHECK(ps[0] == '\r' && ps[1] == '\n', "delimiter line with junk");
        ps += 2;
        size_t len = (size_t)(pe - ps);
        if (k < 2)
            for (size_t i = 0; i < len; i++)
                FUZZ_CHECK((unsigned char)ps[i] < 0x80, "8-bit octet in part %zu", k + 1);
        /* Each part's own header, ended by an empty line. */
        FUZZ_CHECK(memmem(ps, len, "\r\n\r\n", 4) != NULL, "part %zu has no body",
                   k + 1);
        check_fields(ps, len, true, "part header");
        if (k == 1) {
            const char *st = memmem(ps, len, "\r\n\r\n", 4) + 4;
            size_t sl = (size_t)(pe - st);
            check_fields(st, sl, false, "delivery-status");
            FUZZ_CHECK(count_lines_starting(st, sl, "Final-Recipient: ") == nrcpt,
                       "Final-Recipient fields");
            FUZZ_CHECK(count_lines_starting(st, sl, "Action: ") == nrcpt, "Action fields");
            FUZZ_CHECK(count_lines_starting(st, sl, "Status: ") == nrcpt, "Status fields");
            FUZZ_CHECK(count_lines_starting(st, sl, "Reporting-MTA: dns;") == 1,
                       "Reporting-MTA");
        }
    }
    (void)bl;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    struct reader r = { data + 1, size - 1 };
    int64_t arrival = 1700000000, now = 1700003600, last = 1700003500,
            until = 1700864000;
    if (flags & 0x10) {
        if (r.n < 32)
            return 0;
        arrival = get_i64(r.p);
        now = get_i64(r.p + 8);
        last = get_i64(r.p + 16);
        until = get_i64(r.p + 24);
        r.p += 32;
        r.n -= 32;
    }
    size_t nrcpt = 1 + ((flags >> 1) & 3);
    char *pool[NSTR_ENV + NSTR_RCPT * MAX_RCPT];
    size_t np = 0;
    const char *hostname = next_str(&r, &pool[np++]);
    const char *id = next_str(&r, &pool[np++]);
    struct queue_envelope env;
    memset(&env, 0, sizeof env);
    snprintf(env.id, sizeof env.id, "%s", id);
    env.sender = next_str(&r, &pool[np++]);
    env.helo = next_str(&r, &pool[np++]);
    env.client_addr = next_str(&r, &pool[np++]);
    env.client_name = next_str(&r, &pool[np++]);
    env.arrival = arrival;
    struct bounce_rcpt rc[MAX_RCPT];
    for (size_t i = 0; i < nrcpt; i++) {
        rc[i].addr = next_str(&r, &pool[np++]);
        rc[i].orcpt = next_str(&r, &pool[np++]);
        rc[i].status = next_str(&r, &pool[np++]);
        rc[i].remote_mta = next_str(&r, &pool[np++]);
        rc[i].diagnostic = next_str(&r, &pool[np++]);
        if (*rc[i].orcpt == '\0')
            rc[i].orcpt = NULL;
        if (*rc[i].remote_mta == '\0')
            rc[i].remote_mta = NULL;
        rc[i].last_attempt = last;
        rc[i].retry_until = until;
    }
    struct evbuffer *orig = NULL;
    if (!(flags & 0x08)) {
        orig = evbuffer_new();
        if (orig == NULL || evbuffer_add(orig, r.p, r.n) != 0)
            abort();
    }
    struct evbuffer *out = evbuffer_new();
    if (out == NULL)
        abort();
    enum bounce_kind kind = (flags & 1) ? BOUNCE_DELAYED : BOUNCE_FAILED;
    int ret = bounce_build(out, kind, hostname, id, &env, rc, nrcpt, orig, now);
    size_t olen = evbuffer_get_length(out);
    if (env.sender[0] == '\0') {
        FUZZ_CHECK(ret == -1 && errno == EINVAL, "a DSN to the null sender");
    }
    if (ret != 0) {
        FUZZ_CHECK(olen == 0, "failed, but %zu octets were appended", olen);
    } else {
        const char *m = (const char *)evbuffer_pullup(out, -1);
        /* Is there a header section to return? The same rule as bounce.c:
         * the original up to its first empty line, when not empty. */
        bool have_headers = false;
        if (orig != NULL && r.n > 0 && r.p[0] != '\r' && r.p[0] != '\n')
            have_headers = true;
        check_dsn(m, olen, nrcpt, have_headers);
        uint32_t qf = bounce_qenv_flags(&env, orig);
        bool eight = false;
        for (size_t i = 0; i < olen; i++)
            if ((unsigned char)m[i] >= 0x80)
                eight = true;
        if (eight)
            FUZZ_CHECK(qf & 0x01 /* QENV_8BITMIME */, "8-bit DSN without 8BITMIME");
    }
    evbuffer_free(out);
    if (orig != NULL)
        evbuffer_free(orig);
    for (size_t i = 0; i < np; i++)
        free(pool[i]);
    return 0;
}
