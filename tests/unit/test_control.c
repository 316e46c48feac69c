/* Unit tests for the control protocol's pieces and the queue reports
 * (control_proto.c): JSON and terminal escaping of hostile strings, request
 * parsing, data-line framing, and the list/show/stats output. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "control_proto.h"
#include "scheduler.h"

/* The whole of B as a string (B is drained). */
static char *take(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    return s;
}

static void json_is(const char *in, const char *want)
{
    struct evbuffer *b = evbuffer_new();
    ctl_json_string(b, in);
    char *got = take(b);
    assert_string_equal(got, want);
    free(got);
    evbuffer_free(b);
}

static void text_is(const char *in, const char *want)
{
    struct evbuffer *b = evbuffer_new();
    ctl_text_string(b, in);
    char *got = take(b);
    assert_string_equal(got, want);
    free(got);
    evbuffer_free(b);
}

static void json_plain_and_specials(void **state)
{
    (void)state;
    json_is(NULL, "null");
    json_is("", "\"\"");
    json_is("a@b.test", "\"a@b.test\"");
    json_is("say \"hi\" \\o/", "\"say \\\"hi\\\" \\\\o/\"");
    json_is("a\nb\rc\td", "\"a\\nb\\rc\\td\"");
    json_is("\x01\x1f\x7f", "\"\\u0001\\u001f\\u007f\"");
    json_is("/</script>", "\"/</script>\"");
}

static void json_utf8_kept(void **state)
{
    (void)state;
    json_is("caf\xc3\xa9", "\"caf\xc3\xa9\"");                 /* U+00E9 */
    json_is("\xe2\x82\xac", "\"\xe2\x82\xac\"");               /* U+20AC */
    json_is("\xef\xbf\xbf", "\"\xef\xbf\xbf\"");               /* U+FFFF */
    json_is("\xf0\x9f\x93\xab", "\"\xf0\x9f\x93\xab\"");       /* U+1F4EB */
    json_is("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\"");       /* U+10FFFF */
}

/* Each byte that is not part of valid UTF-8 becomes one U+FFFD. */
static void json_bad_bytes_replaced(void **state)
{
    (void)state;
    json_is("\xff", "\"\\ufffd\"");
    json_is("a\x80z", "\"a\\ufffdz\"");                        /* lone tail */
    json_is("\xc0\xaf", "\"\\ufffd\\ufffd\"");                 /* overlong / */
    json_is("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");      /* overlong */
    json_is("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");      /* surrogate */
    json_is("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* >10FFFF */
    json_is("\xf5\x80", "\"\\ufffd\\ufffd\"");
    json_is("x\xe2\x82", "\"x\\ufffd\\ufffd\"");               /* cut short */
    json_is("\xc3\xa9\xc3", "\"\xc3\xa9\\ufffd\"");
    json_is("\xc3\x22", "\"\\ufffd\\\"\"");                    /* then a quote */
}

static void text_escapes(void **state)
{
    (void)state;
    text_is(NULL, "");
    text_is("plain text", "plain text");
    text_is("caf\xc3\xa9", "caf\xc3\xa9");
    text_is("\x1b[31mred\r\n", "\\x1b[31mred\\x0d\\x0a");
    text_is("a\xff\x7f", "a\\xff\\x7f");
}

static void request_parsing(void **state)
{
    (void)state;
    struct ctl_request r;
    char l1[] = "list";
    assert_int_equal(ctl_request_parse(l1, &r), 0);
    assert_string_equal(r.verb, "list");
    assert_int_equal(r.argc, 0);
    char l2[] = "list example.test json";
    assert_int_equal(ctl_request_parse(l2, &r), 0);
    assert_int_equal(r.argc, 2);
    assert_string_equal(r.argv[0], "example.test");
    assert_string_equal(r.argv[1], "json");
    char l3[] = "a 1 2 3 4";
    assert_int_equal(ctl_request_parse(l3, &r), 0);
    assert_int_equal(r.argc, 4);

    char *bad[] = { "", " list", "list ", "list  x", "a 1 2 3 4 5",
                    "list \x01", "list caf\xc3\xa9", "li\tst" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s", bad[i]);
        assert_int_equal(ctl_request_parse(buf, &r), -1);
    }
    char big[CTL_ARG_MAX + 10];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    memcpy(big, "show ", 5);
    assert_int_equal(ctl_request_parse(big, &r), -1);
}

static char *framed(const char *text, bool final, char **rest)
{
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    evbuffer_add(in, text, strlen(text));
    ctl_frame(out, in, final);
    char *s = take(out);
    *rest = take(in);
    evbuffer_free(in);
    evbuffer_free(out);
    return s;
}

static void framing(void **state)
{
    (void)state;
    char *rest;
    char *s = framed("a\n\nb\r\n", false, &rest);
    assert_string_equal(s, "|a\n|\n|b\r\n");
    assert_string_equal(rest, "");
    free(s);
    free(rest);
    s = framed("ok\nerror x\npartial", false, &rest);
    assert_string_equal(s, "|ok\n|error x\n");   /* data never looks like a terminator */
    assert_string_equal(rest, "partial");
    free(s);
    free(rest);
    s = framed("x\npartial", true, &rest);
    assert_string_equal(s, "|x\n+partial\n");
    assert_string_equal(rest, "");
    free(s);
    free(rest);
}

static void ids_and_domains(void **state)
{
    (void)state;
    assert_true(ctl_is_id("CRAX4TG5CY001FVH"));
    assert_false(ctl_is_id("CRAX4TG5CY001FV"));
    assert_false(ctl_is_id("CRAX4TG5CY001FVHX"));
    assert_false(ctl_is_id("crax4tg5cy001fvh"));
    assert_false(ctl_is_id("CRAX4TG5CY001FVI"));  /* I is not an id digit */
    assert_false(ctl_is_id("example.test"));
    assert_true(ctl_domain_match("u@example.test", "example.test"));
    assert_true(ctl_domain_match("u@Example.TEST", "example.test."));
    assert_false(ctl_domain_match("u@sub.example.test", "example.test"));
    assert_false(ctl_domain_match("u@example.test", "ample.test"));
    assert_false(ctl_domain_match("noat", "example.test"));
    assert_false(ctl_domain_match("u@example.test", ""));
}

/* ---- queue_walk_from: the resumable walk behind `list` --------------------- */

static int rm_cb(const char *path, const struct stat *st, int flag,
                 struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void stored_cb(void *arg, int error)
{
    assert_int_equal(error, 0);
    (*(int *)arg)--;
}

struct seen {
    char ids[16][QUEUE_ID_LEN + 1];
    int n;
    int stop_at;                 /* FN returns 7 at this call (0: never) */
};

static int seen_cb(const struct queue_envelope *env, void *arg)
{
    struct seen *s = arg;
    assert_true(s->n < 16);
    memcpy(s->ids[s->n++], env->id, QUEUE_ID_LEN + 1);
    return s->n == s->stop_at ? 7 : 0;
}

static void walk_from_resumes(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_control.XXXXXX", spool[64];
    assert_non_null(mkdtemp(dir));
    snprintf(spool, sizeof spool, "%s/spool", dir);
    struct event_base *base = event_base_new();
    struct queue_opts o = { 0 };
    struct queue *q = queue_open(spool, &o);
    assert_non_null(q);
    assert_int_equal(queue_attach(q, base), 0);
    char ids[5][QUEUE_ID_LEN + 1];
    int pending = 0;
    for (int i = 0; i < 5; i++) {
        struct queue_rcpt r = { .addr = "u@example.test" };
        struct queue_envelope e = { .sender = "s@b.test", .helo = "h",
                                    .client_addr = "192.0.2.1",
                                    .client_name = "c", .arrival = 1700000000,
                                    .nrcpt = 1, .rcpt = &r };
        queue_new_id(q, e.id);
        memcpy(ids[i], e.id, sizeof ids[i]);
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "Subject: %d\r\n\r\nbody\r\n", i);
        pending++;
        assert_int_equal(queue_store(q, &e, b, stored_cb, &pending), 0);
        evbuffer_free(b);
    }
    while (pending > 0)
        assert_int_equal(event_base_loop(base, EVLOOP_ONCE), 0);

    /* 2 + 2 + 1: MORE, MORE, then the end */
    struct seen s = { .n = 0 };
    assert_int_equal(queue_walk_from(q, NULL, 2, seen_cb, &s), QUEUE_WALK_MORE);
    assert_int_equal(s.n, 2);
    assert_int_equal(queue_walk_from(q, s.ids[1], 2, seen_cb, &s), QUEUE_WALK_MORE);
    assert_int_equal(queue_walk_from(q, s.ids[3], 2, seen_cb, &s), 0);
    assert_int_equal(s.n, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(s.ids[i], ids[i]);
    /* past the end, from "", and a stop by FN */
    s.n = 0;
    assert_int_equal(queue_walk_from(q, ids[4], 10, seen_cb, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(queue_walk_from(q, "", 10, seen_cb, &s), 0);
    assert_int_equal(s.n, 5);
    s.n = 0;
    s.stop_at = 3;
    assert_int_equal(queue_walk_from(q, NULL, 10, seen_cb, &s), 7);
    assert_int_equal(s.n, 3);
    /* resuming from an id that was deleted meanwhile */
    assert_int_equal(queue_delete(q, ids[1]), 0);
    assert_int_equal(queue_delete(q, ids[2]), 0);
    s.n = 0;
    s.stop_at = 0;
    assert_int_equal(queue_walk_from(q, ids[1], 10, seen_cb, &s), 0);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.ids[0], ids[3]);
    assert_string_equal(s.ids[1], ids[4]);
    queue_close(q);
    event_base_free(base);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- reports ------------------------------------------------------------ */

static struct queue_rcpt rcpts[3] = {
    { .addr = "one@example.test", .state = RCPT_DEFERRED, .attempts = 3,
      .next_attempt = 1700000600, .last_error = "451 4.3.0 \"busy\"\n\xff" },
    { .addr = "two@other.test", .state = RCPT_HELD, .attempts = 0,
      .next_attempt = 0 },
    { .addr = "three@example.test", .state = RCPT_DONE },
};

static struct queue_envelope test_env(void)
{
    struct queue_envelope e = {
        .id = "CRAX4TG5CY001FVH", .sender = "s@b.test", .helo = "h.test",
        .client_addr = "192.0.2.1", .client_name = "c.test",
        .arrival = 1700000000, .size = 1500, .nrcpt = 3, .rcpt = rcpts,
    };
    return e;
}

static bool first_is_active(void *arg, const char *id, uint16_t idx)
{
    (void)arg;
    (void)id;
    return idx == 0;
}

static void list_json_entry(void **state)
{
    (void)state;
    struct queue_envelope e = test_env();
    struct report_list r;
    struct evbuffer *b = evbuffer_new();
    report_list_init(&r, REPORT_JSON, NULL, NULL, NULL);
    report_list_add(&r, &e, b);
    report_list_end(&r, b);
    char *s = take(b);
    assert_string_equal(s,
        "{\"id\":\"CRAX4TG5CY001FVH\",\"size\":1500,\"arrival\":1700000000,"
        "\"sender\":\"s@b.test\",\"recipients\":["
        "{\"address\":\"one@example.test\",\"state\":\"deferred\","
        "\"attempts\":3,\"next_attempt\":1700000600,"
        "\"last_error\":\"451 4.3.0 \\\"busy\\\"\\n\\ufffd\"},"
        "{\"address\":\"two@other.test\",\"state\":\"held\",\"attempts\":0,"
        "\"next_attempt\":0,\"last_error\":null}]}\n");
    free(s);
    /* the null sender is "", a domain filter keeps its recipients only */
    e.sender = "";
    report_list_init(&r, REPORT_JSON, "OTHER.test", first_is_active, NULL);
    report_list_add(&r, &e, b);
    s = take(b);
    assert_non_null(strstr(s, "\"sender\":\"\""));
    assert_null(strstr(s, "one@example.test"));
    assert_non_null(strstr(s, "two@other.test\",\"state\":\"held\""));
    free(s);
    report_list_init(&r, REPORT_JSON, "nowhere.test", NULL, NULL);
    report_list_add(&r, &e, b);
    report_list_end(&r, b);
    assert_int_equal(evbuffer_get_length(b), 0);
    evbuffer_free(b);
}

static void list_text_entry(void **state)
{
    (void)state;
    struct queue_envelope e = test_env();
    struct report_list r;
    struct evbuffer *b = evbuffer_new();
    report_list_init(&r, REPORT_TEXT, NULL, first_is_active, NULL);
    report_list_end(&r, b);
    char *s = take(b);
    assert_string_equal(s, "Mail queue is empty\n");
    free(s);
    report_list_add(&r, &e, b);
    report_list_end(&r, b);
    s = take(b);
    assert_non_null(strstr(s, "-Queue ID-"));
    assert_non_null(strstr(s, "\nCRAX4TG5CY001FVH     1500 "));
    assert_non_null(strstr(s, "  s@b.test\n"));
    assert_non_null(strstr(s, "    active    one@example.test\n"));
    assert_non_null(strstr(s, "(451 4.3.0 \"busy\"\\x0a\\xff)\n"));
    assert_non_null(strstr(s, "    held      two@other.test\n"));
    assert_null(strstr(s, "three@"));                  /* done: not pending */
    assert_non_null(strstr(s, "\n-- 2 Kbytes in 1 request.\n"));
    free(s);
    report_list_add(&r, &e, b);
    report_list_end(&r, b);
    s = take(b);
    assert_null(strstr(s, "-Queue ID-"));               /* header once */
    assert_non_null(strstr(s, "\n-- 3 Kbytes in 2 requests.\n"));
    free(s);
    evbuffer_free(b);
}

static void show_header_and_body(void **state)
{
    (void)state;
    struct queue_envelope e = test_env();
    const char *msg = "Received: x\r\n\ty\r\nSubject: s\r\n\r\nbody\r\n";
    struct evbuffer *body = evbuffer_new(), *b = evbuffer_new();
    evbuffer_add(body, msg, strlen(msg));
    report_show(&e, body, false, NULL, NULL, b);
    char *s = take(b);
    assert_non_null(strstr(s, "id: CRAX4TG5CY001FVH\n"));
    assert_non_null(strstr(s, "sender: <s@b.test>\n"));
    assert_non_null(strstr(s, "client: c.test [192.0.2.1]\n"));
    assert_non_null(strstr(s, "recipient: done <three@example.test>"));
    assert_non_null(strstr(s, "\n\nReceived: x\n\ty\nSubject: s\n"));
    assert_null(strstr(s, "body"));
    assert_null(strchr(s, '\r'));
    free(s);
    evbuffer_drain(body, evbuffer_get_length(body));
    evbuffer_add(body, msg, strlen(msg));
    report_show(&e, body, true, NULL, NULL, b);
    s = take(b);
    assert_string_equal(s, msg);
    free(s);
    evbuffer_free(body);
    evbuffer_free(b);
}

static void stats_counts(void **state)
{
    (void)state;
    struct queue_envelope e = test_env();
    struct report_stats r;
    struct evbuffer *b = evbuffer_new();
    report_stats_init(&r, first_is_active, NULL);
    report_stats_add(&r, &e);
    e.arrival = 1600000000;
    report_stats_add(&r, &e);
    struct sched_stats ss = { .delivered = 7, .bounced = 2, .deferred = 5,
                              .ndown = 1 };
    snprintf(ss.down[0].name, sizeof ss.down[0].name, "other.test");
    ss.down[0].down = true;
    ss.down[0].next_probe = 1700000090;
    snprintf(ss.down[0].last_error, sizeof ss.down[0].last_error, "refused");
    report_stats_end(&r, &ss, 1700000000, b);
    char *s = take(b);
    assert_non_null(strstr(s, "messages: 2\n"));
    assert_non_null(strstr(s, "recipients: 4 (deferred 0, held 2, active 2)\n"));
    assert_non_null(strstr(s, "bytes: 3000 (3 Kbytes)\n"));
    assert_non_null(strstr(s, "oldest: 1157d 9h ("));
    assert_non_null(strstr(s, "delivered since start: 7\n"));
    assert_non_null(strstr(s, "bounced since start: 2\n"));
    assert_non_null(strstr(s, "example.test "));
    assert_non_null(strstr(s, "destinations down: 1\n  other.test: next probe "
                              "in 1m 30s ("));
    assert_non_null(strstr(s, "; refused\n"));
    /* domains come sorted */
    assert_true(strstr(s, "example.test ") < strstr(s, "other.test "));
    free(s);
    report_stats_free(&r);
    report_stats_init(&r, NULL, NULL);
    report_stats_end(&r, NULL, 1700000000, b);
    s = take(b);
    assert_non_null(strstr(s, "messages: 0\n"));
    assert_non_null(strstr(s, "oldest: -\n"));
    assert_non_null(strstr(s, "not running"));
    free(s);
    report_stats_free(&r);
    evbuffer_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_plain_and_specials),
        cmocka_unit_test(json_utf8_kept),
        cmocka_unit_test(json_bad_bytes_replaced),
        cmocka_unit_test(text_escapes),
        cmocka_unit_test(request_parsing),
        cmocka_unit_test(framing),
        cmocka_unit_test(ids_and_domains),
        cmocka_unit_test(walk_from_resumes),
        cmocka_unit_test(list_json_entry),
        cmocka_unit_test(list_text_entry),
        cmocka_unit_test(show_header_and_body),
        cmocka_unit_test(stats_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
