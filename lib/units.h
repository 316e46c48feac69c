/* Parsing of the config file's durations (s m h d) and sizes (k M G). */
#ifndef BMX_UNITS_H
#define BMX_UNITS_H

#include <stdint.h>

/* "90", "30s", "5m", "1h", "10d" -> seconds. 0 on success, -1 if malformed
 * or out of range. A bare number is seconds. */
int parse_duration(const char *s, int64_t *out);

/* "1024", "64k", "50M", "5G" -> bytes (powers of 1024). 0 or -1. */
int parse_size(const char *s, uint64_t *out);

#endif
