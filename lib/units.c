/* Durations and sizes as the config contract writes them: a decimal number
 * and at most one unit letter, nothing else (no spaces, signs or fractions),
 * so that "7days" or "1.5h" is an error rather than a silent guess. */
#include "units.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>

static int parse_scaled(const char *s, uint64_t max, const char *units,
                        const uint64_t *mult, uint64_t *out)
{
    if (s == NULL || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    uint64_t m = 1;
    if (*end != '\0') {
        int i = 0;
        while (units[i] != '\0' && units[i] != *end)
            i++;
        if (units[i] == '\0' || end[1] != '\0')
            return -1;
        m = mult[i];
    }
    if (v > max / m)
        return -1;
    *out = (uint64_t)v * m;
    return 0;
}

int parse_duration(const char *s, int64_t *out)
{
    static const uint64_t mult[] = { 1, 60, 3600, 86400 };
    uint64_t v;
    /* Cap at ~100 years: anything larger is a typo and would overflow time_t math. */
    if (parse_scaled(s, 100ULL * 366 * 86400, "smhd", mult, &v) != 0)
        return -1;
    *out = (int64_t)v;
    return 0;
}

int parse_size(const char *s, uint64_t *out)
{
    static const uint64_t mult[] = { 1024, 1024 * 1024, 1024 * 1024 * 1024 };
    return parse_scaled(s, 1ULL << 50, "kMG", mult, out);
}
