/* The body of a RETR or TOP response: the message byte-stuffed (RFC 1939
 * 3: a line starting with '.' gets another '.'), cut after the header and
 * N body lines for TOP, and terminated by ".\r\n". The message arrives in
 * chunks of any size; the state carries across chunk boundaries. Pure
 * (evbuffer only), so it can be unit-tested on its own. */
#ifndef BMX_POP3_RETR_H
#define BMX_POP3_RETR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

struct pop3_stuffer {
    bool bol;               /* the next byte starts a line */
    bool in_header;         /* TOP: before the blank line ending the header */
    bool limited;           /* TOP: stop after body_lines body lines */
    bool done;              /* TOP's cut reached: ignore the rest */
    char last;              /* last byte seen (a CR before the LF?) */
    uint64_t linelen;       /* bytes of the current line so far */
    uint64_t body_lines;    /* TOP: body lines still to send */
};

/* RETR: the whole message. */
void pop3_stuffer_init(struct pop3_stuffer *st);
/* TOP: the header, the blank line, then LINES lines of the body. */
void pop3_stuffer_init_top(struct pop3_stuffer *st, uint64_t lines);

/* Appends DATA (LEN bytes of the message, continuing where the last call
 * stopped) to OUT, stuffed. Returns how many bytes were used: fewer than
 * LEN only when TOP's cut was reached (st->done). */
size_t pop3_stuffer_feed(struct pop3_stuffer *st, const char *data, size_t len,
                         struct evbuffer *out);

/* Ends the response: a CRLF if the message did not end with a line end
 * (the terminator must start a line), then ".\r\n". */
void pop3_stuffer_finish(struct pop3_stuffer *st, struct evbuffer *out);

#endif
