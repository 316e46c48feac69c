/* The pure parts of the catch-all store and the login code: renaming the
 * sender's own envelope headers, and splitting a SASL PLAIN response. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "auth.h"
#include "catchall_store.h"

static void renamed(const char *in, const char *want)
{
    size_t n;
    char *out = catchall_rename_headers(in, strlen(in), &n);
    assert_non_null(out);
    if (n != strlen(want) || memcmp(out, want, n) != 0)
        fail_msg("rename(\"%s\")\n  = \"%.*s\"\n want \"%s\"", in, (int)n, out, want);
    free(out);
}

static void rename_header_fields_only(void **state)
{
    (void)state;
    renamed("Subject: x\r\n\r\nbody\r\n", "Subject: x\r\n\r\nbody\r\n");
    renamed("X-Original-To: a@b\r\nReturn-Path: <c@d>\r\n\r\nX-Original-To: body\r\n",
            "X-Untrusted-Original-To: a@b\r\nX-Untrusted-Return-Path: <c@d>\r\n\r\n"
            "X-Original-To: body\r\n");
}

static void rename_case_and_spacing(void **state)
{
    (void)state;
    renamed("x-original-to: a\r\nRETURN-PATH : b\r\n\r\n",
            "x-Untrusted-original-to: a\r\nX-Untrusted-RETURN-PATH : b\r\n\r\n");
    /* a longer name that merely starts with one of ours is left alone */
    renamed("X-Original-To-Foo: a\r\nReturn-Paths: b\r\n\r\n",
            "X-Original-To-Foo: a\r\nReturn-Paths: b\r\n\r\n");
    /* continuation lines follow their field unchanged */
    renamed("Return-Path:\r\n <a@b>\r\nSubject: s\r\n\r\n",
            "X-Untrusted-Return-Path:\r\n <a@b>\r\nSubject: s\r\n\r\n");
}

static void rename_without_body(void **state)
{
    (void)state;
    renamed("Return-Path: <x>\r\n", "X-Untrusted-Return-Path: <x>\r\n");
    renamed("", "");
    renamed("\r\nReturn-Path: <x>\r\n", "\r\nReturn-Path: <x>\r\n");
}

static void plain_ok(const char *buf, size_t len, const char *user, const char *pass)
{
    char copy[256];
    memcpy(copy, buf, len);
    const char *u = NULL, *p = NULL;
    if (!auth_plain_split(copy, len, &u, &p))
        fail_msg("auth_plain_split rejected a valid response for %s", user);
    assert_string_equal(u, user);
    assert_string_equal(p, pass);
}

static void plain_bad(const char *buf, size_t len)
{
    char copy[256];
    memcpy(copy, buf, len);
    const char *u = NULL, *p = NULL;
    if (auth_plain_split(copy, len, &u, &p))
        fail_msg("auth_plain_split accepted a bad response (user %s)", u);
}

static void sasl_plain(void **state)
{
    (void)state;
    plain_ok("\0catch\0secret", 13, "catch", "secret");
    plain_ok("catch\0catch\0secret", 18, "catch", "secret");
    plain_ok("\0catch\0secret\0\0", 15, "catch", "secret");   /* base64 padding */
    plain_ok("\0catch\0", 7, "catch", "");
    plain_bad("other\0catch\0secret", 18);                  /* authzid != authcid */
    plain_bad("\0\0secret", 8);                             /* no user */
    plain_bad("\0catch", 6);                                /* no password field */
    plain_bad("catch", 5);
    plain_bad("\0catch\0sec\0ret", 14);                     /* NUL inside the password */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rename_header_fields_only),
        cmocka_unit_test(rename_case_and_spacing),
        cmocka_unit_test(rename_without_body),
        cmocka_unit_test(sasl_plain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
