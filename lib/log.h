/* One-line-per-event logging, to stderr in the foreground or to syslog. */
#ifndef BMX_LOG_H
#define BMX_LOG_H

#include <stdbool.h>

void log_init(const char *ident, bool foreground, bool verbose);
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool log_verbose(void);

#endif
