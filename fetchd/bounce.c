/* on_reject = "bounce": a delivery status notification (RFC 3464, with the
 * original's header section as text/rfc822-headers, RFC 6522) to the
 * message's sender, for the recipients the local target refused for good.
 * It goes through the same delivery target, with the null sender. */
#include "deliver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static size_t header_len(const char *msg, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (msg[i] == '\n' && msg[i + 1] == '\n')
            return i + 1;
        if (msg[i] == '\n' && msg[i + 1] == '\r' && i + 2 < len && msg[i + 2] == '\n')
            return i + 1;
    }
    return len;
}

/* The DSN code from a reply such as "550 5.1.1 <x>: unknown", else 5.0.0. */
static void status_code(const char *reply, char *out, size_t len)
{
    const char *p = strchr(reply, ' ');
    unsigned a, b, c;
    if (p != NULL && sscanf(p + 1, "%1u.%3u.%3u", &a, &b, &c) == 3 && a == 5)
        snprintf(out, len, "5.%u.%u", b, c);
    else
        snprintf(out, len, "5.0.0");
}

int deliver_bounce(struct deliverer *d, const char *sender, char *const *rcpts,
                   const struct dresult *res, size_t n, const char *msg, size_t len)
{
    if (sender[0] == '\0')
        return 0;               /* never bounce a bounce: it is dropped */
    char host[256] = "localhost", date[64], boundary[64];
    gethostname(host, sizeof host - 1);
    time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", localtime_r(&now, &tm));
    snprintf(boundary, sizeof boundary, "%ld.%ld/%s", (long)now, (long)getpid(), host);
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    if (f == NULL)
        return -1;
    fprintf(f, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
               "To: <%s>\r\n"
               "Subject: Undelivered Mail Returned to Sender\r\n"
               "Date: %s\r\n"
               "Message-ID: <%s>\r\n"
               "Auto-Submitted: auto-replied\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               "\tboundary=\"%s\"\r\n\r\n"
               "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
               "This is fetchd at %s. Your message could not be delivered\r\n"
               "to the following recipients:\r\n\r\n",
            host, sender, date, boundary, boundary, boundary, host);
    for (size_t i = 0; i < n; i++)
        if (res[i].st == DS_PERM)
            fprintf(f, "<%s>: %s\r\n", rcpts[i], res[i].reply);
    fprintf(f, "\r\n--%s\r\nContent-Type: message/delivery-status\r\n\r\n"
               "Reporting-MTA: dns; %s\r\nArrival-Date: %s\r\n",
            boundary, host, date);
    for (size_t i = 0; i < n; i++) {
        if (res[i].st != DS_PERM)
            continue;
        char code[16];
        status_code(res[i].reply, code, sizeof code);
        fprintf(f, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n"
                   "Diagnostic-Code: smtp; %s\r\n", rcpts[i], code, res[i].reply);
    }
    fprintf(f, "\r\n--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n", boundary);
    fwrite(msg, 1, header_len(msg, len), f);
    fprintf(f, "\r\n--%s--\r\n", boundary);
    if (fclose(f) != 0) {
        free(out);
        return -1;
    }
    char *to[1] = { (char *)sender };
    struct dresult r;
    deliver_message(d, "", to, 1, out, outlen, &r);
    free(out);
    return r.st == DS_OK ? 0 : -1;
}
