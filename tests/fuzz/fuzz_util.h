/* Small helpers shared by the libFuzzer targets in tests/fuzz/. Every
 * failed check prints what was wrong and aborts, which libFuzzer reports
 * as a crash with the input saved as the reproducer. */
#ifndef BMX_FUZZ_UTIL_H
#define BMX_FUZZ_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                              \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "fuzz check failed at %s:%d: %s\n  ",          \
                    __FILE__, __LINE__, #cond);                            \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            abort();                                                       \
        }                                                                  \
    } while (0)

/* A NUL-terminated heap copy of DATA (the caller frees it). */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* Offset of the first CR not followed by LF or LF not preceded by CR in
 * [p, p+n), or (size_t)-1 when every line end is CRLF. */
static inline size_t fuzz_bare_eol(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n'))
            return i;
        if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
            return i;
    }
    return (size_t)-1;
}

/* Length of the longest line (CRLF excluded) in [p, p+n). */
static inline size_t fuzz_longest_line(const unsigned char *p, size_t n)
{
    size_t best = 0, cur = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            if (cur > 0 && p[i - 1] == '\r')
                cur--;
            if (cur > best)
                best = cur;
            cur = 0;
        } else {
            cur++;
        }
    }
    return cur > best ? cur : best;
}

#endif
