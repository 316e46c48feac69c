/* Unit tests: the DATA scanner (end of data, unstuffing, smuggling). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include <event2/buffer.h>

#include "smtp_data.h"

/* Feeds STREAM line by line (as the session does); returns the offset just
 * past the end of data, or -1 if the stream never ended DATA. */
static long feed(const char *stream, size_t len, struct data_state *d,
                 struct evbuffer *out)
{
    size_t off = 0;
    data_begin(d, 1 << 20);
    while (off < len) {
        const char *lf = memchr(stream + off, '\n', len - off);
        if (lf == NULL)
            return -1;
        size_t n = (size_t)(lf - (stream + off)) + 1;
        bool end = data_feed_line(d, stream + off, n, out);
        off += n;
        if (end)
            return (long)off;
    }
    return -1;
}

static void test_unstuff(void **state)
{
    (void)state;
    struct data_state d;
    struct evbuffer *out = evbuffer_new();
    const char s[] = "Subject: x\r\n\r\n..dot\r\nline\r\n.\r\nMAIL FROM:<x>\r\n";
    long end = feed(s, sizeof s - 1, &d, out);
    assert_int_equal(end, (long)strstr(s, "MAIL") - (long)s);
    assert_int_equal(data_verdict(&d), DATA_ACCEPT);
    const char want[] = "Subject: x\r\n\r\n.dot\r\nline\r\n";
    assert_int_equal(evbuffer_get_length(out), sizeof want - 1);
    assert_memory_equal(evbuffer_pullup(out, -1), want, sizeof want - 1);
    evbuffer_free(out);
}

/* The published smuggling end-of-data forms must never end DATA. */
static void test_smuggling(void **state)
{
    (void)state;
    const char *variants[] = {
        "a\r\n\n.\nMAIL FROM:<s@x>\r\n",
        "a\r\n\n.\r\nMAIL FROM:<s@x>\r\n",
        "a\n.\r\nMAIL FROM:<s@x>\r\n",
        "a\r\n.\nMAIL FROM:<s@x>\r\n",
        "a\r.\rMAIL FROM:<s@x>\r\n",
        "a\r\n.\rMAIL FROM:<s@x>\r\n",
        "a\r.\r\nMAIL FROM:<s@x>\r\n",
    };
    for (size_t i = 0; i < sizeof variants / sizeof *variants; i++) {
        struct data_state d;
        struct evbuffer *out = evbuffer_new();
        assert_int_equal(feed(variants[i], strlen(variants[i]), &d, out), -1);
        assert_true(d.bad_eol);
        /* And the real end, once it comes, ends it with a refusal. */
        assert_true(data_feed_line(&d, ".\r\n", 3, out));
        assert_int_equal(data_verdict(&d), DATA_BAD_EOL);
        evbuffer_free(out);
    }
}

static void test_dot_after_bare_lf_line(void **state)
{
    (void)state;
    struct data_state d;
    struct evbuffer *out = evbuffer_new();
    data_begin(&d, 1000);
    assert_false(data_feed_line(&d, "x\n", 2, out));
    /* "." after a line that did not end in CRLF is not <CRLF>.<CRLF>. */
    assert_false(data_feed_line(&d, ".\r\n", 3, out));
    assert_true(data_feed_line(&d, ".\r\n", 3, out));
    evbuffer_free(out);
}

static void test_limits(void **state)
{
    (void)state;
    struct data_state d;
    struct evbuffer *out = evbuffer_new();
    char line[1100];
    memset(line, 'x', sizeof line);
    data_begin(&d, 1 << 20);
    memcpy(line + 998, "\r\n", 2);
    assert_false(data_feed_line(&d, line, 1000, out));
    assert_int_equal(data_verdict(&d), DATA_ACCEPT);
    memset(line, 'x', sizeof line);
    memcpy(line + 999, "\r\n", 2);
    assert_false(data_feed_line(&d, line, 1001, out));
    assert_int_equal(data_verdict(&d), DATA_LONG_LINE);

    data_begin(&d, 10);
    assert_false(data_feed_line(&d, "0123456789\r\n", 12, out));
    assert_int_equal(data_verdict(&d), DATA_TOO_BIG);

    data_begin(&d, 1 << 20);
    for (int i = 0; i < 101; i++)
        data_feed_line(&d, "Received: from x\r\n", 18, out);
    assert_int_equal(data_verdict(&d), DATA_LOOP);
    data_begin(&d, 1 << 20);
    data_feed_line(&d, "\r\n", 2, out);
    for (int i = 0; i < 101; i++)
        data_feed_line(&d, "Received: in the body is fine\r\n", 31, out);
    assert_int_equal(data_verdict(&d), DATA_ACCEPT);

    data_begin(&d, 1 << 20);
    data_feed_overlong(&d, 9000);
    /* The tail of an over-long line that looks like "." is not the end. */
    assert_false(data_feed_line(&d, ".\r\n", 3, out));
    assert_true(data_feed_line(&d, ".\r\n", 3, out));
    assert_int_equal(data_verdict(&d), DATA_LONG_LINE);
    evbuffer_free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unstuff), cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_dot_after_bare_lf_line), cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests_name("smtp_data", tests, NULL, NULL);
}
