/* DATA line scanner. See smtp_data.h for the rules. Once a message is known
 * to be refused, its bytes are no longer stored, but the scanner keeps
 * looking for the real end of data so the session stays in step. */
#include "smtp_data.h"

#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

void data_begin(struct data_state *d, uint64_t limit)
{
    memset(d, 0, sizeof *d);
    d->limit = limit;
    d->in_header = true;
    d->prev_crlf = true;
}

static bool keeping(const struct data_state *d)
{
    return !d->bad_eol && !d->long_line && !d->too_big;
}

static void scan_header(struct data_state *d, const char *s, size_t n)
{
    if (n == 0) {
        d->in_header = false;
        return;
    }
    if (n >= 9 && strncasecmp(s, "Received:", 9) == 0)
        d->received++;
}

bool data_feed_line(struct data_state *d, const char *line, size_t len,
                    struct evbuffer *out)
{
    bool crlf = len >= 2 && line[len - 2] == '\r';
    size_t n = len - (crlf ? 2 : 1);
    bool was_long = d->in_long;
    bool after_crlf = d->prev_crlf;

    d->in_long = false;
    d->prev_crlf = crlf;
    if (!crlf || memchr(line, '\r', n) != NULL)
        d->bad_eol = true;
    /* NUL is no more allowed in a message than a bare CR (RFC 5322 2.1,
     * RFC 6152 8bit data), and a next hop that drops NULs would read
     * "<CRLF>NUL.<CRLF>" as the end of data: refused the same way. */
    if (memchr(line, '\0', n) != NULL)
        d->bad_eol = true;
    if (!was_long && after_crlf && crlf && n == 1 && line[0] == '.')
        return true;
    if (was_long) {
        d->size += len;
        return false;
    }
    if (n > 0 && line[0] == '.') {
        line++;
        n--;
    }
    if (n > DATA_LINE_MAX)
        d->long_line = true;
    d->size += n + 2;
    if (d->size > d->limit)
        d->too_big = true;
    if (d->in_header)
        scan_header(d, line, n);
    if (keeping(d))              /* kept lines end in CRLF: bad_eol otherwise */
        evbuffer_add(out, line, n + 2);
    return false;
}

void data_feed_overlong(struct data_state *d, size_t len)
{
    d->long_line = true;
    d->in_long = true;
    d->prev_crlf = false;
    d->size += len;
    if (d->size > d->limit)
        d->too_big = true;
}

enum data_verdict data_verdict(const struct data_state *d)
{
    if (d->too_big)
        return DATA_TOO_BIG;
    if (d->bad_eol)
        return DATA_BAD_EOL;
    if (d->long_line)
        return DATA_LONG_LINE;
    if (d->received > DATA_HOPS_MAX)
        return DATA_LOOP;
    return DATA_ACCEPT;
}
