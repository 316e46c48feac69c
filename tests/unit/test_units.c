/* parse_duration and parse_size: the config file's units. The point of the
 * strict grammar is that a typo ("7days", "1.5h", "50MB") is an error the
 * operator sees, never a silently different value. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "units.h"

/* Sentinels show whether a failed parse left the output alone. */
#define DUR_UNSET ((int64_t)-12345)
#define SIZE_UNSET ((uint64_t)12345)

static void dur_ok(const char *s, int64_t want)
{
    int64_t got = DUR_UNSET;
    if (parse_duration(s, &got) != 0)
        fail_msg("parse_duration(\"%s\") failed, expected %lld", s, (long long)want);
    if (got != want)
        fail_msg("parse_duration(\"%s\") = %lld, expected %lld", s, (long long)got,
                 (long long)want);
}

static void dur_bad(const char *s)
{
    int64_t got = DUR_UNSET;
    if (parse_duration(s, &got) != -1)
        fail_msg("parse_duration(\"%s\") accepted (%lld), expected an error", s ? s : "(null)",
                 (long long)got);
}

static void size_ok(const char *s, uint64_t want)
{
    uint64_t got = SIZE_UNSET;
    if (parse_size(s, &got) != 0)
        fail_msg("parse_size(\"%s\") failed, expected %llu", s, (unsigned long long)want);
    if (got != want)
        fail_msg("parse_size(\"%s\") = %llu, expected %llu", s, (unsigned long long)got,
                 (unsigned long long)want);
}

static void size_bad(const char *s)
{
    uint64_t got = SIZE_UNSET;
    if (parse_size(s, &got) != -1)
        fail_msg("parse_size(\"%s\") accepted (%llu), expected an error", s ? s : "(null)",
                 (unsigned long long)got);
}

static void duration_units(void **state)
{
    (void)state;
    dur_ok("30s", 30);
    dur_ok("5m", 300);
    dur_ok("1h", 3600);
    dur_ok("10d", 864000);
    dur_ok("31d", 2678400);
    dur_ok("0s", 0);
    dur_ok("0d", 0);
}

static void duration_bare_number_is_seconds(void **state)
{
    (void)state;
    dur_ok("0", 0);
    dur_ok("1", 1);
    dur_ok("90", 90);
    dur_ok("86400", 86400);
    dur_ok("007", 7);
}

/* The cap is about 100 years (36600 days). */
static void duration_range(void **state)
{
    (void)state;
    dur_ok("36600d", 36600LL * 86400);
    dur_ok("3162240000", 3162240000LL);
    dur_bad("36601d");
    dur_bad("3162240001");
    dur_ok("878400h", 36600LL * 86400);
    dur_bad("878401h");
    dur_bad("9223372036854775807");
    dur_bad("18446744073709551615");
    dur_bad("18446744073709551616");
    dur_bad("99999999999999999999999999s");
    dur_bad("153722867280912931m");     /* overflows int64 when scaled */
}

static void duration_malformed(void **state)
{
    (void)state;
    dur_bad(NULL);
    dur_bad("");
    dur_bad("7days");
    dur_bad("1.5h");
    dur_bad("-1");
    dur_bad("+5");
    dur_bad(" 5m");
    dur_bad("5m ");
    dur_bad("5 m");
    dur_bad("m");
    dur_bad("5mm");
    dur_bad("1h30m");
    dur_bad("0x10");
    dur_bad("5\n");
}

/* Units are case-sensitive: M, K and G are sizes, not durations. */
static void duration_rejects_size_units(void **state)
{
    (void)state;
    dur_bad("5M");
    dur_bad("5S");
    dur_bad("5H");
    dur_bad("5D");
    dur_bad("5k");
    dur_bad("5G");
    dur_bad("5w");
    dur_bad("5y");
}

static void size_units(void **state)
{
    (void)state;
    size_ok("1k", 1024);
    size_ok("64k", 65536);
    size_ok("1M", 1048576);
    size_ok("50M", 52428800);
    size_ok("1G", 1073741824ULL);
    size_ok("5G", 5368709120ULL);
    size_ok("0k", 0);
}

static void size_bare_number_is_bytes(void **state)
{
    (void)state;
    size_ok("0", 0);
    size_ok("1", 1);
    size_ok("1024", 1024);
    size_ok("52428800", 52428800);
}

/* The cap is 2^50 bytes (1 PiB). */
static void size_range(void **state)
{
    (void)state;
    size_ok("1048576G", 1ULL << 50);
    size_ok("1125899906842624", 1ULL << 50);
    size_bad("1048577G");
    size_bad("1125899906842625");
    size_bad("1073741825M");
    size_bad("18446744073709551615");
    size_bad("18446744073709551616");
    size_bad("18014398509481984k");     /* 2^54 k: wraps 64 bits when scaled */
}

static void size_malformed(void **state)
{
    (void)state;
    size_bad(NULL);
    size_bad("");
    size_bad("50MB");
    size_bad("1.5M");
    size_bad("-1");
    size_bad("+1");
    size_bad(" 5M");
    size_bad("5M ");
    size_bad("5 M");
    size_bad("M");
    size_bad("5MM");
    size_bad("0x10");
}

/* Units are case-sensitive: m is minutes, and K, g, T are not sizes. */
static void size_rejects_other_units(void **state)
{
    (void)state;
    size_bad("5m");
    size_bad("5K");
    size_bad("5g");
    size_bad("5T");
    size_bad("5s");
    size_bad("5h");
    size_bad("5d");
    size_bad("5b");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(duration_units),
        cmocka_unit_test(duration_bare_number_is_seconds),
        cmocka_unit_test(duration_range),
        cmocka_unit_test(duration_malformed),
        cmocka_unit_test(duration_rejects_size_units),
        cmocka_unit_test(size_units),
        cmocka_unit_test(size_bare_number_is_bytes),
        cmocka_unit_test(size_range),
        cmocka_unit_test(size_malformed),
        cmocka_unit_test(size_rejects_other_units),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
