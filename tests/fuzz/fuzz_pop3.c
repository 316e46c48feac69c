/* libFuzzer target: the POP3 server's parsers (catchall/pop3_parse.c) and
 * its RETR/TOP byte-stuffer (catchall/pop3_retr.c).
 *
 * Input: byte 0 picks the part. 0: a command line (verb, message number,
 * TOP arguments); 1: base64 (AUTH PLAIN); otherwise a message to stuff,
 * fed in chunks whose sizes come from byte 1, with a TOP line count from
 * byte 2 when byte 0 is odd.
 *
 * Checked: the argument pointer stays inside the line; a parsed message
 * number is >= 1; base64 is decoded exactly as OpenSSL decodes it, never
 * longer than 3/4 of its input; a stuffed RETR never has a line that is a
 * lone "." before the terminator (that would end the response early and
 * let the rest be read as commands), ends with CRLF "." CRLF, and gives
 * the message back byte for byte once unstuffed. */
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>
#include <openssl/evp.h>

#include "fuzz_util.h"
#include "pop3_parse.h"
#include "pop3_retr.h"

static void check_line(const uint8_t *data, size_t size)
{
    char *line = fuzz_strndup(data, size);
    const char *args = NULL;
    enum pop3_verb v = pop3_parse_verb(line, &args);
    FUZZ_CHECK(v < P3_COUNT && pop3_verb_name(v) != NULL, "verb %d", (int)v);
    FUZZ_CHECK(args >= line && args <= line + strlen(line), "args outside the line");
    unsigned long n;
    if (pop3_parse_msgno(args, &n))
        FUZZ_CHECK(n >= 1, "message number 0 accepted");
    uint64_t lines;
    if (pop3_parse_top(args, &n, &lines))
        FUZZ_CHECK(n >= 1, "TOP 0 accepted");
    free(line);
}

static void check_b64(const uint8_t *data, size_t size)
{
    unsigned char *out = malloc(3 * size / 4 + 4), *ref = malloc(3 * size / 4 + 4);
    long n = pop3_b64decode((const char *)data, size, out);
    if (n >= 0 && size > 1) {
        FUZZ_CHECK((size_t)n <= 3 * size / 4, "decoded %ld from %zu", n, size);
        int r = EVP_DecodeBlock(ref, data, (int)size);
        size_t pad = (size >= 1 && data[size - 1] == '=') + (size >= 2 && data[size - 2] == '=');
        FUZZ_CHECK(r >= 0 && (size_t)r - pad == (size_t)n && memcmp(out, ref, (size_t)n) == 0,
                   "differs from EVP_DecodeBlock (%d - %zu vs %ld)", r, pad, n);
    }
    free(out);
    free(ref);
}

static void check_retr(const uint8_t *data, size_t size, unsigned chunk, bool top,
                       uint64_t lines)
{
    struct pop3_stuffer st;
    if (top)
        pop3_stuffer_init_top(&st, lines);
    else
        pop3_stuffer_init(&st);
    struct evbuffer *out = evbuffer_new();
    for (size_t off = 0; off < size && !st.done;) {
        size_t n = size - off < chunk ? size - off : chunk;
        size_t used = pop3_stuffer_feed(&st, (const char *)data + off, n, out);
        FUZZ_CHECK(used <= n && (used == n || st.done), "used %zu of %zu", used, n);
        off += used;
    }
    pop3_stuffer_finish(&st, out);
    size_t len = evbuffer_get_length(out);
    const char *p = (const char *)evbuffer_pullup(out, -1);
    FUZZ_CHECK(len >= 3 && memcmp(p + len - 3, ".\r\n", 3) == 0
               && (len == 3 || p[len - 4] == '\n'), "no terminator at the end");
    /* unstuff and look for an early terminator */
    char *plain = malloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len - 3;) {
        const char *nl = memchr(p + i, '\n', len - 3 - i);
        size_t ll = nl ? (size_t)(nl - (p + i)) + 1 : len - 3 - i;
        FUZZ_CHECK(!(ll >= 1 && p[i] == '.' && (ll == 1 || p[i + 1] == '\r' || p[i + 1] == '\n')),
                   "a lone '.' line at offset %zu ends the response early", i);
        size_t skip = (p[i] == '.');
        memcpy(plain + o, p + i + skip, ll - skip);
        o += ll - skip;
        i += ll;
    }
    if (!top) {
        FUZZ_CHECK(o >= size && memcmp(plain, data, size) == 0, "unstuffed RETR differs");
        FUZZ_CHECK(o == size || (o == size + 2 && memcmp(plain + size, "\r\n", 2) == 0),
                   "unstuffed RETR has %zu extra bytes", o - size);
    } else {
        FUZZ_CHECK(o <= size + 2, "TOP longer than the message");
    }
    free(plain);
    evbuffer_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    switch (data[0]) {
    case 0:
        check_line(data + 1, size - 1);
        break;
    case 1:
        check_b64(data + 1, size - 1);
        break;
    default:
        check_retr(data + 3, size - 3, 1u + data[1], data[0] & 1, data[2] == 255 ? UINT64_MAX : data[2]);
        break;
    }
    return 0;
}
