/* fetchd multidrop routing: envelope header (topmost only), local domains,
 * map, To/Cc fallback, postmaster, sender from Return-Path. Pure parsing:
 * the module is compiled in here (it needs nothing but libc). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../fetchd/multidrop.c"

static char *local_domains[] = { "example.org", "example.net" };
static const struct fd_map maps[] = { { "sales@example.org", "alice" } };

static struct md_rules rules(void)
{
    return (struct md_rules){ "X-Original-To", local_domains, 2, maps, 1, "postmaster" };
}

static void route(const char *msg, struct md_rules r, struct md_route *rt)
{
    assert_int_equal(md_route(msg, strlen(msg), &r, rt), 0);
}

static void test_topmost_envelope_header(void **state)
{
    (void)state;
    struct md_route rt;
    route("Return-Path: <s@remote.test>\r\n"
          "X-Original-To: bob@example.org\r\n"
          "Received: from x by y\r\n"
          "X-Original-To: mallory@example.org\r\n"
          "To: list@elsewhere.test\r\n\r\nbody\r\n", rules(), &rt);
    assert_int_equal(rt.nrcpts, 1);
    assert_string_equal(rt.rcpts[0], "bob@example.org");
    assert_string_equal(rt.sender, "s@remote.test");
    assert_string_equal(rt.source, "X-Original-To");
    md_route_free(&rt);
}

static void test_map_and_case(void **state)
{
    (void)state;
    struct md_route rt;
    route("x-original-to:   <Sales@EXAMPLE.org>\nSubject: hi\n\nbody\n", rules(), &rt);
    assert_int_equal(rt.nrcpts, 1);
    assert_string_equal(rt.rcpts[0], "alice");
    assert_string_equal(rt.sender, "");
    md_route_free(&rt);
}

static void test_foreign_domain_falls_back_to_to_cc(void **state)
{
    (void)state;
    struct md_route rt;
    route("Return-Path: <>\n"
          "X-Original-To: someone@elsewhere.test\n"
          "To: \"Bob, B.\" <bob@example.org>, ext@other.test\n"
          "Cc: carol@example.net (Carol),\n"
          "  team: dave@example.org, bob@example.org;\n\nbody\n", rules(), &rt);
    assert_string_equal(rt.source, "To/Cc");
    assert_int_equal(rt.nrcpts, 3);
    assert_string_equal(rt.rcpts[0], "bob@example.org");
    assert_string_equal(rt.rcpts[1], "carol@example.net");
    assert_string_equal(rt.rcpts[2], "dave@example.org");
    assert_string_equal(rt.sender, "");
    md_route_free(&rt);
}

static void test_postmaster_last(void **state)
{
    (void)state;
    struct md_route rt;
    route("From: Someone <from@remote.test>\nTo: a@elsewhere.test\n\nX-Original-To: "
          "bob@example.org\n", rules(), &rt);
    assert_string_equal(rt.source, "postmaster");
    assert_int_equal(rt.nrcpts, 1);
    assert_string_equal(rt.rcpts[0], "postmaster");
    assert_string_equal(rt.sender, "from@remote.test");   /* no Return-Path: From */
    md_route_free(&rt);
}

static void test_no_localdomains_takes_header_only(void **state)
{
    (void)state;
    struct md_rules r = rules();
    r.nlocal = 0;
    struct md_route rt;
    route("X-Original-To: x@anywhere.test\nTo: y@example.org\n\n", r, &rt);
    assert_int_equal(rt.nrcpts, 1);
    assert_string_equal(rt.rcpts[0], "x@anywhere.test");
    md_route_free(&rt);
    route("To: y@example.org\n\n", r, &rt);     /* no To/Cc guessing without domains */
    assert_string_equal(rt.source, "postmaster");
    md_route_free(&rt);
}

static void test_folded_header_and_span(void **state)
{
    (void)state;
    const char *msg = "Return-Path:\r\n <s@r.test>\r\nX-Original-To:\r\n\tbob@example.org\r\n\r\n";
    char *v = md_header(msg, strlen(msg), "x-original-to");
    assert_non_null(v);
    assert_string_equal(v, "\tbob@example.org");
    free(v);
    size_t off, len;
    assert_true(md_field_span(msg, strlen(msg), "Return-Path", &off, &len));
    assert_int_equal(off, 0);
    assert_int_equal(len, strlen("Return-Path:\r\n <s@r.test>\r\n"));
    assert_false(md_field_span(msg, strlen(msg), "Return", &off, &len));
}

static void test_addresses_rejects_garbage(void **state)
{
    (void)state;
    char **l;
    size_t n = md_addresses("undisclosed-recipients:;, -opt@x.test, a b@c.test, "
                            "\"q@x\" <ok@Host.Example.>, <x@y>", &l);
    assert_int_equal(n, 2);
    assert_string_equal(l[0], "ok@host.example");
    assert_string_equal(l[1], "x@y");
    md_free_list(l, n);
}

static void test_dedupe(void **state)
{
    (void)state;
    struct md_route rt;
    route("To: bob@example.org, BOB@example.org\nCc: bob@Example.org\n\n", rules(), &rt);
    assert_int_equal(rt.nrcpts, 1);
    md_route_free(&rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topmost_envelope_header),
        cmocka_unit_test(test_map_and_case),
        cmocka_unit_test(test_foreign_domain_falls_back_to_to_cc),
        cmocka_unit_test(test_postmaster_last),
        cmocka_unit_test(test_no_localdomains_takes_header_only),
        cmocka_unit_test(test_folded_header_and_span),
        cmocka_unit_test(test_addresses_rejects_garbage),
        cmocka_unit_test(test_dedupe),
    };
    return cmocka_run_group_tests_name("multidrop", tests, NULL, NULL);
}
