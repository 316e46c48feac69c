/* Logging: Postfix-style lines ("ident[pid]: message"), one per event. In the
 * foreground they go to stderr with a timestamp, otherwise to syslog(3). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "backupmx";
static bool log_fg = true;
static bool log_verb;
static pid_t log_pid;            /* foreground only: nothing forks after log_init */

void log_init(const char *ident, bool foreground, bool verbose)
{
    log_ident = ident;
    log_fg = foreground;
    log_verb = verbose;
    log_pid = getpid();
    if (!foreground)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

bool log_verbose(void)
{
    return log_verb;
}

static void log_vemit(int prio, const char *level, const char *fmt, va_list ap)
{
    if (!log_fg) {
        vsyslog(prio, fmt, ap);
        return;
    }
    char stamp[32];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    /* Build the whole line first so concurrent writers never interleave. */
    char line[4096];
    int n = snprintf(line, sizeof line, "%s.%03ldZ %s[%d]: %s", stamp,
                     ts.tv_nsec / 1000000, log_ident, (int)(log_pid ? log_pid : getpid()), level);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

#define LOG_FN(name, prio, level)                  \
    void name(const char *fmt, ...)                \
    {                                              \
        va_list ap;                                \
        va_start(ap, fmt);                         \
        log_vemit(prio, level, fmt, ap);           \
        va_end(ap);                                \
    }

LOG_FN(log_info, LOG_INFO, "")
LOG_FN(log_warn, LOG_WARNING, "warning: ")
LOG_FN(log_err, LOG_ERR, "error: ")

void log_debug(const char *fmt, ...)
{
    if (!log_verb)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vemit(LOG_DEBUG, "debug: ", fmt, ap);
    va_end(ap);
}
