/* -v protocol traces for the POP3 and IMAP sessions: one log line per
 * protocol line, "account: C: ..." and "account: S: ...". Credentials are
 * never shown: libetpan marks USER/PASS/LOGIN data as private and those
 * lines are reduced to their verb; any other line that happens to contain
 * the password is masked too. Message data is cut to its first line. */
#include "fetcher.h"
#include "log.h"

#include <libetpan/libetpan.h>
#include <stdio.h>
#include <string.h>

#define TRACE_MAX 200

static void trace_line(const struct fd_account *a, const char *dir, const char *s, size_t n,
                       size_t more)
{
    char buf[TRACE_MAX + 1];
    size_t k = n < TRACE_MAX ? n : TRACE_MAX;
    for (size_t i = 0; i < k; i++)
        buf[i] = (s[i] >= 32 && s[i] < 127) ? s[i] : '?';
    buf[k] = '\0';
    if (a->password != NULL && a->password[0] != '\0') {
        char *p;
        size_t pl = strlen(a->password);
        while ((p = strstr(buf, a->password)) != NULL)
            memset(p, '*', pl);
    }
    if (more > 0 || n > k)
        log_debug("%s: %s: %s [+%zu bytes]", a->name, dir, buf, more + (n - k));
    else
        log_debug("%s: %s: %s", a->name, dir, buf);
}

/* "LOGIN user pass" -> "LOGIN ****"; "a1 LOGIN ..." keeps the tag. */
static void trace_private(const struct fd_account *a, const char *s, size_t n)
{
    char verb[64];
    size_t i = 0, o = 0;
    for (int words = 0; i < n && o < sizeof verb - 1; i++) {
        if (s[i] == ' ' && ++words == 2)
            break;
        if (s[i] == '\r' || s[i] == '\n')
            break;
        verb[o++] = s[i];
    }
    verb[o] = '\0';
    /* POP3 sends "USER x"/"PASS x": keep only the first word. */
    char *sp = strchr(verb, ' ');
    if (sp != NULL && (strncmp(verb, "USER", 4) == 0 || strncmp(verb, "PASS", 4) == 0))
        *sp = '\0';
    log_debug("%s: C: %s ****", a->name, verb);
}

void trace_protocol(const struct fd_account *a, int log_type, const char *str, size_t size)
{
    if (!log_verbose() || str == NULL)
        return;
    const char *dir;
    switch (log_type) {
    case MAILSTREAM_LOG_TYPE_DATA_SENT_PRIVATE:
        trace_private(a, str, size);
        return;
    case MAILSTREAM_LOG_TYPE_DATA_SENT:
        dir = "C";
        break;
    case MAILSTREAM_LOG_TYPE_DATA_RECEIVED:
        dir = "S";
        break;
    default:
        return;
    }
    /* Sent data: every line (pipelined commands). Received data: the first
     * line of the chunk, with the size of the rest. */
    const char *p = str, *end = str + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        size_t len = n > 0 && p[n - 1] == '\r' ? n - 1 : n;
        const char *next = nl ? nl + 1 : end;
        if (*dir == 'S') {
            trace_line(a, dir, p, len, (size_t)(end - next));
            return;
        }
        trace_line(a, dir, p, len, 0);
        p = next;
    }
}
