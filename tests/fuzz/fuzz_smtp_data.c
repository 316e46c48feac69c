/* libFuzzer target: the DATA scanner of backupmx/smtp_data.c, driven the way
 * read_data_line() in smtp_session.c drives it: whole lines (up to and
 * including their LF) go to data_feed_line(); a run of more than CHUNK
 * octets without an LF is handed to data_feed_overlong() and dropped.
 *
 * Input: byte 0 picks CHUNK (999..1254: the session's 8192 scaled down so
 * that short inputs reach the over-long path; always above the 998-octet
 * line limit, as in the session), byte 1 the message size limit (0 = none,
 * else 64 * n octets), the rest is the client's byte stream after "354".
 * After an end of data the rest of the stream is scanned as a new message.
 * Like the session, a drop keeps a trailing CR back (it may be the CR of
 * the CRLF before the final dot).
 *
 * Invariants (a reference model of RFC 5321 4.1.1.4 / 4.5.2 follows the
 * stream next to the scanner):
 *   - end of data is reported exactly for a ".\r\n" line that follows a CRLF
 *     (or starts the data) and whose start was not dropped as over-long,
 *     that is only at "\r\n.\r\n";
 *   - the stored output never holds a bare CR or LF, only CRLF line ends;
 *   - a message with a bare CR or LF anywhere is never accepted (smuggling),
 *     nor one with a line over 998 octets, nor one over the size limit;
 *   - an accepted message is exactly the unstuffed lines of the stream. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

#include "fuzz_util.h"
#include "smtp_data.h"

struct model {
    bool prev_crlf;              /* the stream so far ends in CRLF (or is empty) */
    bool bad_eol, long_line, too_big;
    uint64_t size;
    struct evbuffer *want;       /* the unstuffed lines */
};

static void model_begin(struct model *m)
{
    m->prev_crlf = true;
    m->bad_eol = m->long_line = m->too_big = false;
    m->size = 0;
    evbuffer_drain(m->want, evbuffer_get_length(m->want));
}

/* One complete raw line (with its LF). Returns true at the end of data. */
static bool model_line(struct model *m, const unsigned char *p, size_t len,
                       uint64_t limit)
{
    bool crlf = len >= 2 && p[len - 2] == '\r';
    bool after = m->prev_crlf;
    m->prev_crlf = crlf;
    if (after && len == 3 && memcmp(p, ".\r\n", 3) == 0)
        return true;
    size_t n = len - (crlf ? 2 : 1);
    if (!crlf || memchr(p, '\r', n) != NULL)
        m->bad_eol = true;
    if (n > 0 && p[0] == '.')
        p++, n--;
    if (n > DATA_LINE_MAX)
        m->long_line = true;
    m->size += n + 2;
    if (m->size > limit)
        m->too_big = true;
    evbuffer_add(m->want, p, n);
    evbuffer_add(m->want, "\r\n", 2);
    return false;
}

static void check_message(const struct data_state *d, const struct model *m,
                          struct evbuffer *out, uint64_t limit, bool ended)
{
    size_t olen = evbuffer_get_length(out);
    const unsigned char *o = evbuffer_pullup(out, -1);
    size_t bare = fuzz_bare_eol(o, olen);
    FUZZ_CHECK(bare == (size_t)-1, "bare CR/LF at offset %zu of the stored message", bare);
    FUZZ_CHECK(olen == 0 || (olen >= 2 && o[olen - 2] == '\r' && o[olen - 1] == '\n'),
               "stored message does not end in CRLF");
    if (!ended)
        return;
    enum data_verdict v = data_verdict(d);
    FUZZ_CHECK(v >= DATA_ACCEPT && v <= DATA_LOOP, "verdict %d", v);
    /* The octets of an over-long line that are dropped unseen may hide a
     * bare CR, and the size check is skipped for the tail of such a line:
     * the message is refused all the same, with the 554 5.6.0 of the long
     * line, so only the reason is relaxed there. */
    if (m->too_big && !m->long_line)
        FUZZ_CHECK(v == DATA_TOO_BIG, "over the limit but verdict %d", v);
    if (m->bad_eol && !m->long_line)
        FUZZ_CHECK(v == DATA_BAD_EOL || v == DATA_TOO_BIG,
                   "bare CR/LF in the stream but verdict %d", v);
    if (m->long_line)
        FUZZ_CHECK(v != DATA_ACCEPT && v != DATA_LOOP,
                   "a line over 998 octets but verdict %d", v);
    if (v == DATA_ACCEPT || v == DATA_LOOP) {
        size_t wlen = evbuffer_get_length(m->want);
        FUZZ_CHECK(!m->bad_eol && !m->long_line && !m->too_big,
                   "accepted a message the model refuses (bad_eol=%d long=%d big=%d)",
                   m->bad_eol, m->long_line, m->too_big);
        FUZZ_CHECK(olen == wlen &&
                   (olen == 0 || memcmp(o, evbuffer_pullup(m->want, -1), olen) == 0),
                   "stored message (%zu octets) differs from the unstuffed stream "
                   "(%zu octets)", olen, wlen);
        FUZZ_CHECK(olen <= limit, "accepted %zu octets over a limit of %llu", olen,
                   (unsigned long long)limit);
        FUZZ_CHECK(d->size == olen, "size %llu for %zu stored octets",
                   (unsigned long long)d->size, olen);
        FUZZ_CHECK(fuzz_longest_line(o, olen) <= DATA_LINE_MAX, "long line stored");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t chunk = DATA_LINE_MAX + 1 + data[0];
    uint64_t limit = data[1] ? (uint64_t)data[1] * 64 : UINT64_MAX;
    const unsigned char *p = data + 2;
    size_t n = size - 2;

    struct data_state d;
    struct model m = { .want = evbuffer_new() };
    struct evbuffer *out = evbuffer_new();
    if (m.want == NULL || out == NULL)
        abort();
    data_begin(&d, limit);
    model_begin(&m);

    size_t pos = 0;
    bool was_long = false;       /* the current line's start was dropped */
    size_t line_start = 0;       /* where the current raw line began */
    while (pos < n) {
        const unsigned char *lf = memchr(p + pos, '\n', n - pos);
        size_t avail = lf ? (size_t)(lf - (p + pos)) + 1 : n - pos;
        if (lf == NULL || avail > chunk + 1) {
            /* No LF among the next CHUNK + 1 octets: the session sees more
             * than CHUNK buffered without an LF and drops them, all but a
             * trailing CR. */
            if (avail <= chunk)
                break;           /* the stream ends in a short partial line */
            size_t drop = chunk + 1;
            if (p[pos + drop - 1] == '\r')
                drop--;
            data_feed_overlong(&d, drop);
            pos += drop;
            was_long = true;
            continue;
        }
        bool end = data_feed_line(&d, (const char *)p + pos, avail, out);
        bool want_end = false;
        if (was_long) {
            /* The tail of an over-long line: the model sees the whole line. */
            size_t whole = pos + avail - line_start;
            bool crlf = whole >= 2 && p[line_start + whole - 2] == '\r';
            m.prev_crlf = crlf;
            m.bad_eol |= !crlf || memchr(p + line_start, '\r', whole - (crlf ? 2 : 1));
            m.long_line = true;
            m.size += whole;
            if (m.size > limit)
                m.too_big = true;
        } else {
            want_end = model_line(&m, p + pos, avail, limit);
        }
        FUZZ_CHECK(end == want_end, "end of data %s at stream offset %zu (line %zu "
                   "octets, after a CRLF: %d)", end ? "reported" : "missed",
                   pos, avail, !was_long);
        pos += avail;
        was_long = false;
        line_start = pos;
        check_message(&d, &m, out, limit, end);
        if (end) {
            evbuffer_drain(out, evbuffer_get_length(out));
            data_begin(&d, limit);
            model_begin(&m);
        }
    }
    check_message(&d, &m, out, limit, false);
    evbuffer_free(out);
    evbuffer_free(m.want);
    return 0;
}
