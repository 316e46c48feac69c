/* Unit tests: SMTP verbs and MAIL/RCPT arguments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "smtp_parse.h"

static void test_verbs(void **state)
{
    (void)state;
    const char *args;
    assert_int_equal(smtp_parse_verb("EHLO client.test", &args), CMD_EHLO);
    assert_string_equal(args, "client.test");
    assert_int_equal(smtp_parse_verb("ehlo   x", &args), CMD_EHLO);
    assert_string_equal(args, "x");
    assert_int_equal(smtp_parse_verb("mail FROM:<a@b.test>", &args), CMD_MAIL);
    assert_string_equal(args, "FROM:<a@b.test>");
    assert_int_equal(smtp_parse_verb("DATA", &args), CMD_DATA);
    assert_string_equal(args, "");
    assert_int_equal(smtp_parse_verb("QUIT", &args), CMD_QUIT);
    assert_int_equal(smtp_parse_verb("StartTLS", &args), CMD_STARTTLS);
    assert_int_equal(smtp_parse_verb("ETRN example.test", &args), CMD_ETRN);
    assert_int_equal(smtp_parse_verb("DATAX", &args), CMD_UNKNOWN);
    assert_int_equal(smtp_parse_verb("MAIL:FROM", &args), CMD_UNKNOWN);
    assert_int_equal(smtp_parse_verb("", &args), CMD_UNKNOWN);
    assert_int_equal(smtp_parse_verb("GET / HTTP/1.0", &args), CMD_UNKNOWN);
}

static enum param_status mail(const char *a, struct smtp_params *p, struct mailaddr *m)
{
    const char *bad;
    return smtp_parse_path_args(a, true, m, p, &bad);
}

static void test_mail_params(void **state)
{
    (void)state;
    struct smtp_params p;
    struct mailaddr m;
    assert_int_equal(mail("FROM:<a@b.test>", &p, &m), PARAM_OK);
    assert_false(p.size_set);
    assert_int_equal(mail("FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8", &p, &m), PARAM_OK);
    assert_true(p.size_set);
    assert_int_equal(p.size, 1000);
    assert_int_equal(p.body, BODY_8BITMIME);
    assert_true(p.smtputf8);
    assert_int_equal(mail("from: <a@b.test>", &p, &m), PARAM_OK);
    assert_int_equal(mail("FROM:<>", &p, &m), PARAM_OK);
    assert_true(m.null);
    assert_int_equal(mail("FROM:<a@b.test> SIZE=abc", &p, &m), PARAM_BAD_VALUE);
    assert_int_equal(mail("FROM:<a@b.test> SIZE=99999999999999999999999", &p, &m), PARAM_BAD_VALUE);
    assert_int_equal(mail("FROM:<a@b.test> BODY=BINARYMIME", &p, &m), PARAM_BAD_VALUE);
    assert_int_equal(mail("FROM:<a@b.test> XFOO=1", &p, &m), PARAM_UNKNOWN);
    assert_int_equal(mail("FROM:a@b.test", &p, &m), PARAM_NOPATH);
    assert_int_equal(mail("TO:<a@b.test>", &p, &m), PARAM_NOPATH);
    assert_int_equal(mail("FROM:<a@b.test>junk", &p, &m), PARAM_ADDR_SYNTAX);
    assert_int_equal(mail("FROM:<a@@b.test>", &p, &m), PARAM_ADDR_SYNTAX);
}

static void test_rcpt(void **state)
{
    (void)state;
    struct smtp_params p;
    struct mailaddr m;
    const char *bad;
    assert_int_equal(smtp_parse_path_args("TO:<u@example.test>", false, &m, &p, &bad), PARAM_OK);
    assert_string_equal(m.full, "u@example.test");
    assert_int_equal(smtp_parse_path_args("TO:<>", false, &m, &p, &bad), PARAM_ADDR_SYNTAX);
    assert_int_equal(smtp_parse_path_args("TO:<u%v@example.test>", false, &m, &p, &bad), PARAM_ROUTING);
    assert_int_equal(smtp_parse_path_args("TO:<u@example.test> SIZE=1", false, &m, &p, &bad), PARAM_UNKNOWN);
    assert_int_equal(smtp_parse_path_args("FROM:<u@example.test>", false, &m, &p, &bad), PARAM_NOPATH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verbs), cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_rcpt),
    };
    return cmocka_run_group_tests_name("smtp_parse", tests, NULL, NULL);
}
