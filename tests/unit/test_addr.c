/* Unit tests: RFC 5321 path parsing and relay-trick detection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "addr.h"

static enum addr_status parse(const char *s, struct mailaddr *a, bool null_ok)
{
    const char *end = NULL;
    enum addr_status st = addr_parse_path(s, null_ok, a, &end);
    if (st == ADDR_OK || st == ADDR_ROUTING)
        assert_non_null(end);
    return st;
}

static void test_plain(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_int_equal(parse("<User.Name+tag@Example.TEST>", &a, false), ADDR_OK);
    assert_string_equal(a.local, "User.Name+tag");
    assert_string_equal(a.domain, "example.test");
    assert_string_equal(a.full, "User.Name+tag@example.test");
    assert_false(a.null);
}

static void test_trailing_dot(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_int_equal(parse("<u@example.test.>", &a, false), ADDR_OK);
    assert_string_equal(a.domain, "example.test");
}

static void test_null(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_int_equal(parse("<>", &a, true), ADDR_OK);
    assert_true(a.null);
    assert_int_equal(parse("<>", &a, false), ADDR_SYNTAX);
}

static void test_routing(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_int_equal(parse("<user%other.test@example.test>", &a, false), ADDR_ROUTING);
    assert_int_equal(parse("<other.test!user@example.test>", &a, false), ADDR_ROUTING);
    assert_int_equal(parse("<@relay.test:user@example.test>", &a, false), ADDR_ROUTING);
    assert_string_equal(a.domain, "example.test");
    assert_int_equal(parse("<@a.test,@b.test:user@example.test>", &a, false), ADDR_ROUTING);
    assert_int_equal(parse("<\"user@other.test\"@example.test>", &a, false), ADDR_ROUTING);
    assert_int_equal(parse("<\"user\\@other.test\"@example.test>", &a, false), ADDR_ROUTING);
    assert_int_equal(parse("<user@other.test@example.test>", &a, false), ADDR_ROUTING);
}

static void test_quoted(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_int_equal(parse("<\"john doe\"@example.test>", &a, false), ADDR_OK);
    assert_string_equal(a.local, "\"john doe\"");
}

static void test_literal(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_int_equal(parse("<u@[127.0.0.1]>", &a, false), ADDR_OK);
    assert_true(a.literal);
    assert_int_equal(parse("<u@[IPv6:::1]>", &a, false), ADDR_OK);
    assert_int_equal(parse("<u@[]>", &a, false), ADDR_SYNTAX);
}

static void test_syntax(void **state)
{
    (void)state;
    struct mailaddr a;
    const char *bad[] = {
        "u@example.test", "<u@example.test", "<@example.test>", "<u@>",
        "<u>", "<u..v@example.test>", "<.u@example.test>", "<u.@example.test>",
        "<u@-example.test>", "<u@example-.test>", "<u@exa mple.test>",
        "<u@example..test>", "<\"unterminated@example.test>", "<u v@example.test>",
        "<u@example.test> trailing-is-ok-for-parser-but-here-end",
    };
    for (size_t i = 0; i + 1 < sizeof bad / sizeof *bad; i++)
        assert_int_equal(parse(bad[i], &a, false), ADDR_SYNTAX);
}

static void test_lengths(void **state)
{
    (void)state;
    struct mailaddr a;
    char buf[600];
    memset(buf, 0, sizeof buf);
    buf[0] = '<';
    memset(buf + 1, 'a', 65);
    strcat(buf, "@example.test>");
    assert_int_equal(parse(buf, &a, false), ADDR_TOOLONG);
    /* 64 octets is the limit, inclusive. */
    memset(buf, 0, sizeof buf);
    buf[0] = '<';
    memset(buf + 1, 'a', 64);
    strcat(buf, "@example.test>");
    assert_int_equal(parse(buf, &a, false), ADDR_OK);
    /* A label over 63 octets is a syntax error. */
    memset(buf, 0, sizeof buf);
    strcpy(buf, "<u@");
    memset(buf + 3, 'b', 64);
    strcat(buf, ".test>");
    assert_int_equal(parse(buf, &a, false), ADDR_SYNTAX);
}

static void test_utf8(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_int_equal(parse("<j\xc3\xb6rg@b\xc3\xbc" "cher.test>", &a, false), ADDR_OK);
    assert_true(a.nonascii);
    assert_int_equal(parse("<j\xc3rg@example.test>", &a, false), ADDR_SYNTAX);
    assert_false(utf8_valid((const unsigned char *)"\xc0\x80", 2));
    assert_false(utf8_valid((const unsigned char *)"\xed\xa0\x80", 3));
    assert_true(utf8_valid((const unsigned char *)"\xf0\x9f\x93\xa7", 4));
    assert_false(utf8_valid((const unsigned char *)"\xf0\x9f\x93", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain), cmocka_unit_test(test_trailing_dot),
        cmocka_unit_test(test_null), cmocka_unit_test(test_routing),
        cmocka_unit_test(test_quoted), cmocka_unit_test(test_literal),
        cmocka_unit_test(test_syntax), cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_utf8),
    };
    return cmocka_run_group_tests_name("addr", tests, NULL, NULL);
}
