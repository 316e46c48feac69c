/* The DATA phase, one line at a time: end-of-data detection, dot-unstuffing
 * and the checks that make SMTP smuggling impossible (RFC 5321 2.3.8, 4.1.1.4,
 * 4.5.3.1.6, 6.3). The only end of data is <CRLF>.<CRLF>. */
#ifndef BMX_SMTP_DATA_H
#define BMX_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define DATA_LINE_MAX 998        /* octets, excluding CRLF (RFC 5321 4.5.3.1.6) */
#define DATA_HOPS_MAX 100        /* Received: headers before we call it a loop */

struct data_state {
    uint64_t size;               /* bytes of message seen (CRLF counted) */
    uint64_t limit;              /* message_size */
    unsigned received;           /* Received: headers in the header section */
    bool in_header;
    bool prev_crlf;              /* last line ended in CRLF (or DATA began) */
    bool in_long;                /* inside an over-long line being discarded */
    bool bad_eol;                /* bare CR or bare LF seen */
    bool long_line;
    bool too_big;
};

enum data_verdict {
    DATA_ACCEPT = 0,
    DATA_BAD_EOL,                /* 554 5.6.0 */
    DATA_LONG_LINE,              /* 554 5.6.0 */
    DATA_TOO_BIG,                /* 552 5.3.4 */
    DATA_LOOP,                   /* 554 5.4.6 */
};

void data_begin(struct data_state *d, uint64_t limit);

/* Feeds one line including its LF (LINE[LEN-1] == '\n'). Appends the
 * unstuffed line with CRLF to OUT while the message is acceptable. Returns
 * true when this line was the end of data. */
bool data_feed_line(struct data_state *d, const char *line, size_t len,
                    struct evbuffer *out);

/* Feeds LEN bytes of a line whose LF has not arrived yet and that is already
 * too long to keep: they are counted and discarded. */
void data_feed_overlong(struct data_state *d, size_t len);

enum data_verdict data_verdict(const struct data_state *d);

#endif
