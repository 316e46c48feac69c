/* Unit tests: POP3 command parsing, AUTH PLAIN base64, and the RETR/TOP
 * byte-stuffer (dot-stuffing and TOP's line cut across chunk boundaries). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <event2/buffer.h>

#include "pop3_parse.h"
#include "pop3_retr.h"

/* ---- verbs ----------------------------------------------------------------- */

static void test_verbs(void **state)
{
    (void)state;
    const char *args;
    assert_int_equal(pop3_parse_verb("CAPA", &args), P3_CAPA);
    assert_string_equal(args, "");
    assert_int_equal(pop3_parse_verb("capa", &args), P3_CAPA);
    assert_int_equal(pop3_parse_verb("StLs", &args), P3_STLS);
    assert_int_equal(pop3_parse_verb("USER catch", &args), P3_USER);
    assert_string_equal(args, "catch");
    assert_int_equal(pop3_parse_verb("AUTH PLAIN AHUAcA==", &args), P3_AUTH);
    assert_string_equal(args, "PLAIN AHUAcA==");
    assert_int_equal(pop3_parse_verb("STAT", &args), P3_STAT);
    assert_int_equal(pop3_parse_verb("LIST 3", &args), P3_LIST);
    assert_string_equal(args, "3");
    assert_int_equal(pop3_parse_verb("UIDL", &args), P3_UIDL);
    assert_int_equal(pop3_parse_verb("RETR 1", &args), P3_RETR);
    assert_int_equal(pop3_parse_verb("top 1 99999999", &args), P3_TOP);
    assert_string_equal(args, "1 99999999");
    assert_int_equal(pop3_parse_verb("DELE 1", &args), P3_DELE);
    assert_int_equal(pop3_parse_verb("NOOP", &args), P3_NOOP);
    assert_int_equal(pop3_parse_verb("RSET", &args), P3_RSET);
    assert_int_equal(pop3_parse_verb("QUIT", &args), P3_QUIT);
    assert_string_equal(pop3_verb_name(P3_TOP), "TOP");
}

static void test_verbs_unknown(void **state)
{
    (void)state;
    const char *args;
    /* LAST is gone (RFC 1939), UTF8 unimplemented, APOP not offered */
    assert_int_equal(pop3_parse_verb("LAST", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("UTF8", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("APOP catch 0123456789abcdef", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("RETR1", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("TOPS 1 2", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("CAP", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb(" QUIT", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("QUIT\tnow", &args), P3_UNKNOWN);
    assert_int_equal(pop3_parse_verb("GET / HTTP/1.0", &args), P3_UNKNOWN);
}

static void test_pass_keeps_spaces(void **state)
{
    (void)state;
    const char *args;
    /* RFC 1939 7: spaces may be part of the password */
    assert_int_equal(pop3_parse_verb("PASS  two  spaces ", &args), P3_PASS);
    assert_string_equal(args, " two  spaces ");
    assert_int_equal(pop3_parse_verb("PASS", &args), P3_PASS);
    assert_string_equal(args, "");
}

/* ---- message numbers and TOP ------------------------------------------------ */

static void test_msgno(void **state)
{
    (void)state;
    unsigned long n = 0;
    assert_true(pop3_parse_msgno("1", &n));
    assert_int_equal(n, 1);
    assert_true(pop3_parse_msgno("4711", &n));
    assert_int_equal(n, 4711);
    assert_true(pop3_parse_msgno(" 2 ", &n));
    assert_int_equal(n, 2);
    assert_true(pop3_parse_msgno("007", &n));
    assert_int_equal(n, 7);
    assert_false(pop3_parse_msgno("", &n));
    assert_false(pop3_parse_msgno("0", &n));
    assert_false(pop3_parse_msgno("-1", &n));
    assert_false(pop3_parse_msgno("+1", &n));
    assert_false(pop3_parse_msgno("1x", &n));
    assert_false(pop3_parse_msgno("1 2", &n));
    assert_false(pop3_parse_msgno("0x10", &n));
    /* huge numbers must not wrap around to a real message */
    assert_false(pop3_parse_msgno("4294967296", &n));
    assert_false(pop3_parse_msgno("18446744073709551617", &n));
    assert_false(pop3_parse_msgno("99999999999999999999999999", &n));
}

static void test_top_args(void **state)
{
    (void)state;
    unsigned long n = 0;
    uint64_t lines = 1;
    assert_true(pop3_parse_top("1 0", &n, &lines));
    assert_int_equal(n, 1);
    assert_int_equal(lines, 0);
    assert_true(pop3_parse_top("3 99999999", &n, &lines));
    assert_int_equal(n, 3);
    assert_int_equal(lines, 99999999);
    assert_true(pop3_parse_top("2  10 ", &n, &lines));
    assert_int_equal(lines, 10);
    /* past 2^64: clamped, it means "all of it" anyway */
    assert_true(pop3_parse_top("1 99999999999999999999999999", &n, &lines));
    assert_true(lines == UINT64_MAX);
    assert_false(pop3_parse_top("1", &n, &lines));
    assert_false(pop3_parse_top("1 ", &n, &lines));
    assert_false(pop3_parse_top("", &n, &lines));
    assert_false(pop3_parse_top("0 1", &n, &lines));
    assert_false(pop3_parse_top("1 -1", &n, &lines));
    assert_false(pop3_parse_top("1 x", &n, &lines));
    assert_false(pop3_parse_top("1 2 3", &n, &lines));
    assert_false(pop3_parse_top("1x 2", &n, &lines));
}

/* ---- base64 ---------------------------------------------------------------------- */

static long b64(const char *in, unsigned char *out)
{
    return pop3_b64decode(in, strlen(in), out);
}

static void test_b64(void **state)
{
    (void)state;
    unsigned char out[64];
    assert_int_equal(b64("AGNhdGNoAHNlY3JldA==", out), 13);
    assert_memory_equal(out, "\0catch\0secret", 13);
    assert_int_equal(b64("Zg==", out), 1);
    assert_memory_equal(out, "f", 1);
    assert_int_equal(b64("Zm8=", out), 2);
    assert_memory_equal(out, "fo", 2);
    assert_int_equal(b64("Zm9v", out), 3);
    assert_memory_equal(out, "foo", 3);
    assert_int_equal(b64("+/+/", out), 3);
    /* RFC 5034 4: "=" is an empty initial response */
    assert_int_equal(b64("=", out), 0);
    assert_int_equal(b64("", out), -1);
    assert_int_equal(b64("Zm9", out), -1);
    assert_int_equal(b64("Zm 9v", out), -1);
    assert_int_equal(b64(" Zm9v", out), -1);
    assert_int_equal(b64("Zm9v ", out), -1);
    assert_int_equal(b64("Z=9v", out), -1);
    assert_int_equal(b64("Zm9v====", out), -1);
    assert_int_equal(b64("Zm9*", out), -1);
    assert_int_equal(b64("*", out), -1);
}

/* ---- the stuffer --------------------------------------------------------------------- */

/* Runs MSG through a stuffer in chunks of CHUNK bytes (TOP with LINES if
 * TOP) and returns the response body, NUL-terminated (caller frees).
 * *USED gets how much of MSG was consumed. */
static char *stuff(const char *msg, size_t chunk, bool top, uint64_t lines, size_t *used)
{
    struct pop3_stuffer st;
    if (top)
        pop3_stuffer_init_top(&st, lines);
    else
        pop3_stuffer_init(&st);
    struct evbuffer *out = evbuffer_new();
    size_t len = strlen(msg), pos = 0;
    while (pos < len && !st.done) {
        size_t n = len - pos < chunk ? len - pos : chunk;
        size_t k = pop3_stuffer_feed(&st, msg + pos, n, out);
        assert_true(k <= n);
        if (k < n)
            assert_true(st.done);
        pos += k;
    }
    pop3_stuffer_finish(&st, out);
    size_t olen = evbuffer_get_length(out);
    char *res = malloc(olen + 1);
    assert_non_null(res);
    evbuffer_remove(out, res, olen);
    res[olen] = '\0';
    evbuffer_free(out);
    if (used != NULL)
        *used = pos;
    return res;
}

/* The same answer whatever the chunking: every chunk size from 1 to the
 * whole message. */
static void expect_stuffed(const char *msg, bool top, uint64_t lines, const char *want)
{
    size_t len = strlen(msg);
    for (size_t chunk = 1; chunk <= len + 1; chunk++) {
        char *got = stuff(msg, chunk, top, lines, NULL);
        if (strcmp(got, want) != 0)
            fail_msg("chunk %zu, top %d, lines %llu:\n got %s\nwant %s", chunk, top,
                     (unsigned long long)lines, got, want);
        free(got);
    }
}

static const char msg_dots[] =
    "Subject: dots\r\n"
    "\r\n"
    ".starts with a dot\r\n"
    "..two dots\r\n"
    ".\r\n"
    "middle . dot\r\n"
    "\r\n"
    ". \r\n"
    "last\r\n";

static void test_stuff_retr(void **state)
{
    (void)state;
    expect_stuffed(msg_dots, false, 0,
                   "Subject: dots\r\n"
                   "\r\n"
                   "..starts with a dot\r\n"
                   "...two dots\r\n"
                   "..\r\n"
                   "middle . dot\r\n"
                   "\r\n"
                   ".. \r\n"
                   "last\r\n"
                   ".\r\n");
    expect_stuffed("a\r\nb\r\n", false, 0, "a\r\nb\r\n.\r\n");
    /* a dot on the very first line */
    expect_stuffed(".x\r\n", false, 0, "..x\r\n.\r\n");
    expect_stuffed("", false, 0, ".\r\n");
}

static void test_stuff_no_final_newline(void **state)
{
    (void)state;
    /* the terminator must start a line of its own */
    expect_stuffed("a\r\nlast", false, 0, "a\r\nlast\r\n.\r\n");
    expect_stuffed("a\r\n.", false, 0, "a\r\n..\r\n.\r\n");
    expect_stuffed("a\r\nb\r", false, 0, "a\r\nb\r\r\n.\r\n");
}

static const char msg_top[] =
    "From: a@b.test\r\n"
    "Subject: folded\r\n"
    " continuation\r\n"
    "\r\n"
    "body 1\r\n"
    ".body 2\r\n"
    "\r\n"
    "body 4\r\n";

static void test_top_counts(void **state)
{
    (void)state;
    const char *head = "From: a@b.test\r\nSubject: folded\r\n continuation\r\n\r\n";
    char want[512];
    /* TOP n 0: the header and the blank line */
    snprintf(want, sizeof want, "%s.\r\n", head);
    expect_stuffed(msg_top, true, 0, want);
    snprintf(want, sizeof want, "%sbody 1\r\n.\r\n", head);
    expect_stuffed(msg_top, true, 1, want);
    snprintf(want, sizeof want, "%sbody 1\r\n..body 2\r\n.\r\n", head);
    expect_stuffed(msg_top, true, 2, want);
    /* an empty body line counts as a line */
    snprintf(want, sizeof want, "%sbody 1\r\n..body 2\r\n\r\n.\r\n", head);
    expect_stuffed(msg_top, true, 3, want);
    /* fetchmail's TOP n 99999999, and exactly the body's length: all */
    snprintf(want, sizeof want, "%sbody 1\r\n..body 2\r\n\r\nbody 4\r\n.\r\n", head);
    expect_stuffed(msg_top, true, 99999999, want);
    expect_stuffed(msg_top, true, 4, want);
    expect_stuffed(msg_top, true, UINT64_MAX, want);
}

static void test_top_consumed(void **state)
{
    (void)state;
    size_t used;
    char *got = stuff(msg_top, 5, true, 1, &used);
    free(got);
    size_t cut = strlen("From: a@b.test\r\nSubject: folded\r\n continuation\r\n\r\nbody 1\r\n");
    assert_int_equal(used, cut);
    got = stuff(msg_top, 1000, true, 1, &used);
    free(got);
    assert_int_equal(used, cut);
    got = stuff(msg_top, 1000, true, 99999999, &used);
    free(got);
    assert_int_equal(used, strlen(msg_top));
}

static void test_top_odd_headers(void **state)
{
    (void)state;
    /* no blank line at all: the header is the whole message */
    expect_stuffed("A: 1\r\nB: 2\r\n", true, 0, "A: 1\r\nB: 2\r\n.\r\n");
    expect_stuffed("A: 1\r\nB: 2", true, 0, "A: 1\r\nB: 2\r\n.\r\n");
    /* an empty header */
    expect_stuffed("\r\nbody\r\n", true, 0, "\r\n.\r\n");
    expect_stuffed("\r\nbody\r\nmore\r\n", true, 1, "\r\nbody\r\n.\r\n");
    /* bare LF line ends still find the blank line */
    expect_stuffed("A: 1\n\nbody\n", true, 0, "A: 1\n\n.\r\n");
    /* a one-byte line is blank only if that byte is the CR of a CRLF */
    expect_stuffed("A: 1\nX\n\nbody\n", true, 0, "A: 1\nX\n\n.\r\n");
    /* a line holding only a CR is not blank */
    expect_stuffed("A: 1\r\n\r\r\n\r\nbody\r\n", true, 0, "A: 1\r\n\r\r\n\r\n.\r\n");
    /* a dot-line in the header is stuffed as well */
    expect_stuffed("A: 1\r\n.B\r\n\r\nx\r\n", true, 0, "A: 1\r\n..B\r\n\r\n.\r\n");
}

static void test_stuff_large(void **state)
{
    (void)state;
    /* 200 KB of lines, every third starting with a dot, in uneven chunks */
    struct evbuffer *m = evbuffer_new(), *w = evbuffer_new();
    for (int i = 0; i < 3000; i++) {
        const char *dot = i % 3 == 0 ? "." : "";
        evbuffer_add_printf(m, "%sline %d %.*s\r\n", dot, i, i % 60, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        evbuffer_add_printf(w, "%s%sline %d %.*s\r\n", dot, dot, i, i % 60, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    }
    evbuffer_add(w, ".\r\n", 3);
    size_t mlen = evbuffer_get_length(m), wlen = evbuffer_get_length(w);
    char *msg = malloc(mlen + 1), *want = malloc(wlen + 1);
    evbuffer_remove(m, msg, mlen);
    evbuffer_remove(w, want, wlen);
    msg[mlen] = want[wlen] = '\0';
    size_t chunks[] = { 1, 7, 4096, 65536, mlen };
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
        char *got = stuff(msg, chunks[k], false, 0, NULL);
        assert_string_equal(got, want);
        free(got);
    }
    free(msg);
    free(want);
    evbuffer_free(m);
    evbuffer_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verbs),
        cmocka_unit_test(test_verbs_unknown),
        cmocka_unit_test(test_pass_keeps_spaces),
        cmocka_unit_test(test_msgno),
        cmocka_unit_test(test_top_args),
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_stuff_retr),
        cmocka_unit_test(test_stuff_no_final_newline),
        cmocka_unit_test(test_top_counts),
        cmocka_unit_test(test_top_consumed),
        cmocka_unit_test(test_top_odd_headers),
        cmocka_unit_test(test_stuff_large),
    };
    return cmocka_run_group_tests_name("pop3", tests, NULL, NULL);
}
