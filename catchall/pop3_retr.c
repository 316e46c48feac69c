/* Byte-stuffing and TOP's cut for RETR/TOP responses. Stored messages
 * already have CRLF line ends (maildir.h), so bytes pass through as they
 * are; only a '.' at a line start is doubled. Runs of bytes without such a
 * dot go to the output in one evbuffer_add. */
#include "pop3_retr.h"

#include <string.h>

#include <event2/buffer.h>

void pop3_stuffer_init(struct pop3_stuffer *st)
{
    memset(st, 0, sizeof *st);
    st->bol = true;
    st->in_header = true;
}

void pop3_stuffer_init_top(struct pop3_stuffer *st, uint64_t lines)
{
    pop3_stuffer_init(st);
    st->limited = true;
    st->body_lines = lines;
}

/* A whole line ended (its LF was just passed): advance TOP's count. */
static void line_ended(struct pop3_stuffer *st, uint64_t len, char before_lf)
{
    if (!st->limited)
        return;
    if (st->in_header) {
        /* "\r\n" or a bare "\n": the blank line that ends the header */
        bool blank = len == 0 || (len == 1 && before_lf == '\r');
        if (!blank)
            return;
        st->in_header = false;
        st->done = st->body_lines == 0;
        return;
    }
    st->body_lines--;
    st->done = st->body_lines == 0;
}

size_t pop3_stuffer_feed(struct pop3_stuffer *st, const char *data, size_t len,
                         struct evbuffer *out)
{
    size_t pos = 0, span = 0;     /* DATA[span, pos) is still to be added */
    while (pos < len && !st->done) {
        if (st->bol) {
            st->bol = false;
            st->linelen = 0;
            if (data[pos] == '.') {
                evbuffer_add(out, data + span, pos - span);
                evbuffer_add(out, ".", 1);
                span = pos;
            }
        }
        const char *nl = memchr(data + pos, '\n', len - pos);
        if (nl == NULL) {
            st->linelen += len - pos;
            st->last = data[len - 1];
            pos = len;
            break;
        }
        size_t n = (size_t)(nl - (data + pos));
        char before_lf = n > 0 ? nl[-1] : st->last;
        uint64_t linelen = st->linelen + n;
        pos += n + 1;
        st->last = '\n';
        st->bol = true;
        line_ended(st, linelen, before_lf);
    }
    evbuffer_add(out, data + span, pos - span);
    return pos;
}

void pop3_stuffer_finish(struct pop3_stuffer *st, struct evbuffer *out)
{
    if (!st->bol)
        evbuffer_add(out, "\r\n", 2);
    evbuffer_add(out, ".\r\n", 3);
}
