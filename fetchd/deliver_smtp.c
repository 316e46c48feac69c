/* SMTP (RFC 5321) and LMTP (RFC 2033) delivery client.
 *
 * One connection per run, opened on the first message and reused (RSET
 * between transactions that did not complete). With PIPELINING (RFC 2920)
 * MAIL, every RCPT and DATA go out in one write and their replies are read
 * together: one round trip plus the message per delivery. LMTP answers the
 * final dot once per accepted recipient. The topmost Return-Path, which
 * became the envelope sender, is not passed on: the final delivery agent
 * writes its own. Every wait is bounded by the account's timeout (the final
 * reply by ten minutes at least, RFC 5321 4.5.3.2.6). */
#include "deliver.h"
#include "log.h"
#include "multidrop.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_SMTP 2048
#define FINAL_TIMEOUT 600

struct smtp_client {
    const struct fd_target *t;
    bool lmtp;
    int timeout;
    int fd;
    bool pipelining, size_ext, eightbit;
    char in[8192];
    size_t inlen, inpos;
    char helo[256];
};

struct reply {
    int code;
    char text[200];             /* the last line, "250 2.0.0 Ok" */
};

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short ev, long deadline)
{
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = { fd, ev, 0 };
        int r = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static void drop(struct smtp_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->inlen = c->inpos = 0;
}

static int send_all(struct smtp_client *c, const char *buf, size_t len)
{
    long deadline = now_ms() + c->timeout * 1000L;
    while (len > 0) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_fd(c->fd, POLLOUT, deadline) == 0)
            continue;
        return -1;
    }
    return 0;
}

/* One line without its CRLF into LINE. */
static int read_line(struct smtp_client *c, char *line, size_t size, long deadline)
{
    size_t o = 0;
    for (;;) {
        while (c->inpos < c->inlen) {
            char ch = c->in[c->inpos++];
            if (ch == '\n') {
                if (o > 0 && line[o - 1] == '\r')
                    o--;
                line[o] = '\0';
                return 0;
            }
            if (o < size - 1)
                line[o++] = ch;
        }
        if (wait_fd(c->fd, POLLIN, deadline) != 0)
            return -1;
        ssize_t n = recv(c->fd, c->in, sizeof c->in, 0);
        if (n <= 0) {
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            return -1;
        }
        c->inlen = (size_t)n;
        c->inpos = 0;
    }
}

/* A whole (multi-line) reply. CB, if set, sees every line (EHLO). */
static int read_reply(struct smtp_client *c, struct reply *r, int secs,
                      void (*cb)(struct smtp_client *, const char *))
{
    long deadline = now_ms() + secs * 1000L;
    char line[LINE_MAX_SMTP];
    for (;;) {
        if (read_line(c, line, sizeof line, deadline) != 0) {
            r->code = 0;
            snprintf(r->text, sizeof r->text, "connection lost or timed out");
            return -1;
        }
        if (strlen(line) < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9'
            || line[2] < '0' || line[2] > '9' || (line[3] != ' ' && line[3] != '-' && line[3] != '\0')) {
            r->code = 0;
            snprintf(r->text, sizeof r->text, "malformed reply: %.100s", line);
            return -1;
        }
        if (cb != NULL)
            cb(c, line + 4 - (line[3] == '\0'));
        if (line[3] != '-') {
            r->code = atoi(line);
            snprintf(r->text, sizeof r->text, "%s", line);
            return 0;
        }
    }
}

static void ehlo_line(struct smtp_client *c, const char *kw)
{
    if (strcasecmp(kw, "PIPELINING") == 0)
        c->pipelining = true;
    else if (strncasecmp(kw, "SIZE", 4) == 0 && (kw[4] == '\0' || kw[4] == ' '))
        c->size_ext = true;
    else if (strcasecmp(kw, "8BITMIME") == 0)
        c->eightbit = true;
}

static int tcp_connect(const char *host, int port, int timeout, char *err, size_t errlen)
{
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG }, *res;
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "%s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        e = errno;
        if (e == EINPROGRESS && wait_fd(fd, POLLOUT, now_ms() + timeout * 1000L) == 0) {
            socklen_t sl = sizeof e;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) == 0 && e == 0)
                break;
        } else if (e == EINPROGRESS) {
            e = ETIMEDOUT;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "cannot connect to %s port %d: %s", host, port, strerror(e));
    return fd;
}

static int unix_connect(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        return fd;
    }
    snprintf(err, errlen, "cannot connect to %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

static int session_open(struct smtp_client *c, char *err, size_t errlen)
{
    c->fd = c->t->path ? unix_connect(c->t->path, err, errlen)
                       : tcp_connect(c->t->host, c->t->port, c->timeout, err, errlen);
    if (c->fd < 0)
        return -1;
    struct reply r;
    char cmd[300];
    c->pipelining = c->size_ext = c->eightbit = false;
    if (read_reply(c, &r, c->timeout, NULL) != 0 || r.code != 220) {
        snprintf(err, errlen, "%s greeting: %s", c->t->spec, r.text);
        drop(c);
        return -1;
    }
    snprintf(cmd, sizeof cmd, "%s %s\r\n", c->lmtp ? "LHLO" : "EHLO", c->helo);
    if (send_all(c, cmd, strlen(cmd)) != 0 || read_reply(c, &r, c->timeout, ehlo_line) != 0
        || r.code != 250) {
        if (!c->lmtp && r.code >= 500) {
            snprintf(cmd, sizeof cmd, "HELO %s\r\n", c->helo);
            if (send_all(c, cmd, strlen(cmd)) == 0 && read_reply(c, &r, c->timeout, NULL) == 0
                && r.code == 250)
                return 0;
        }
        snprintf(err, errlen, "%s %s: %s", c->t->spec, c->lmtp ? "LHLO" : "EHLO", r.text);
        drop(c);
        return -1;
    }
    return 0;
}

struct smtp_client *smtp_client_new(const struct fd_target *t, int timeout)
{
    struct smtp_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->t = t;
    c->lmtp = t->kind == DELIVER_LMTP;
    c->timeout = timeout;
    c->fd = -1;
    if (gethostname(c->helo, sizeof c->helo) != 0 || c->helo[0] == '\0')
        snprintf(c->helo, sizeof c->helo, "localhost");
    c->helo[sizeof c->helo - 1] = '\0';
    return c;
}

void smtp_client_free(struct smtp_client *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0) {
        struct reply r;
        if (send_all(c, "QUIT\r\n", 6) == 0)
            read_reply(c, &r, 5, NULL);
    }
    drop(c);
    free(c);
}

/* The message as DATA: without the topmost Return-Path, CRLF line ends,
 * dot-stuffed, ending in CRLF "." CRLF. */
static char *data_block(const char *msg, size_t len, size_t *outlen, bool *eight)
{
    size_t off = 0, flen = 0;
    bool strip = md_field_span(msg, len, "Return-Path", &off, &flen);
    char *out = malloc(2 * len + 8);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    bool bol = true;
    *eight = false;
    for (size_t i = 0; i < len; i++) {
        if (strip && i == off) {
            i += flen - 1;
            continue;
        }
        char ch = msg[i];
        if ((unsigned char)ch >= 0x80)
            *eight = true;
        if (bol && ch == '.')
            out[o++] = '.';
        bol = false;
        if (ch == '\n') {
            if (o == 0 || out[o - 1] != '\r')
                out[o++] = '\r';
            bol = true;
        } else if (ch == '\r' && (i + 1 >= len || msg[i + 1] != '\n')) {
            out[o++] = '\r';
            ch = '\n';
            bol = true;
        }
        out[o++] = ch;
    }
    if (!bol) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    memcpy(out + o, ".\r\n", 3);
    *outlen = o + 3;
    return out;
}

static enum dstatus status_of(int code)
{
    return code >= 200 && code < 300 ? DS_OK : code >= 500 ? DS_PERM : DS_TEMP;
}

static void set_res(struct dresult *r, enum dstatus st, const char *text)
{
    r->st = st;
    snprintf(r->reply, sizeof r->reply, "%.*s", (int)sizeof r->reply - 1, text);
}

static void all_res(struct dresult *res, size_t n, enum dstatus st, const char *text)
{
    for (size_t i = 0; i < n; i++)
        set_res(&res[i], st, text);
}

/* Sends the envelope; reads MAIL, RCPT and DATA replies. Returns the DATA
 * reply code (354 to go on), 0 on a connection failure. */
static int envelope(struct smtp_client *c, const char *sender, char *const *rcpts, size_t n,
                    size_t size, bool eight, struct dresult *res, size_t *accepted)
{
    size_t cap = 64 + strlen(sender) + 1;
    for (size_t i = 0; i < n; i++)
        cap += strlen(rcpts[i]) + 16;
    char *cmds = malloc(cap), *p = cmds;
    if (cmds == NULL)
        return 0;
    p += sprintf(p, "MAIL FROM:<%s>", sender);
    if (c->size_ext)
        p += sprintf(p, " SIZE=%zu", size);
    if (eight && c->eightbit)
        p += sprintf(p, " BODY=8BITMIME");
    p += sprintf(p, "\r\n");
    char *mail_end = p;
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "RCPT TO:<%s>\r\n", rcpts[i]);
    p += sprintf(p, "DATA\r\n");
    struct reply r;
    int rc = 0;
    *accepted = 0;
    if (c->pipelining) {
        if (send_all(c, cmds, (size_t)(p - cmds)) != 0 || read_reply(c, &r, c->timeout, NULL) != 0)
            goto out;
    } else if (send_all(c, cmds, (size_t)(mail_end - cmds)) != 0
               || read_reply(c, &r, c->timeout, NULL) != 0) {
        goto out;
    }
    bool mail_ok = r.code == 250;
    if (!mail_ok)
        all_res(res, n, status_of(r.code) == DS_OK ? DS_TEMP : status_of(r.code), r.text);
    if (!mail_ok && !c->pipelining) {
        rc = r.code;
        goto out;
    }
    char *q = mail_end;
    for (size_t i = 0; i < n; i++) {
        char *e = strstr(q, "\r\n") + 2;
        if (!c->pipelining && send_all(c, q, (size_t)(e - q)) != 0)
            goto out;
        q = e;
        if (read_reply(c, &r, c->timeout, NULL) != 0)
            goto out;
        if (mail_ok)
            set_res(&res[i], status_of(r.code), r.text);
        *accepted += mail_ok && status_of(r.code) == DS_OK;
    }
    if (!c->pipelining && *accepted == 0) {
        rc = 1;                 /* no DATA sent */
        goto out;
    }
    if (!c->pipelining && send_all(c, "DATA\r\n", 6) != 0)
        goto out;
    if (read_reply(c, &r, c->timeout, NULL) != 0)
        goto out;
    rc = r.code;
    if (rc != 354)
        for (size_t i = 0; i < n; i++)
            if (res[i].st == DS_OK)
                set_res(&res[i], status_of(r.code) == DS_OK ? DS_TEMP : status_of(r.code), r.text);
out:
    free(cmds);
    return rc;
}

/* After a DATA 354: the message, then the final reply (one per accepted
 * recipient with LMTP). Returns -1 on a connection failure. */
static int send_data(struct smtp_client *c, const char *data, size_t dlen, size_t n,
                     struct dresult *res, size_t accepted)
{
    if (send_all(c, data, dlen) != 0)
        return -1;
    struct reply r;
    int secs = c->timeout > FINAL_TIMEOUT ? c->timeout : FINAL_TIMEOUT;
    if (accepted == 0)          /* a 354 without any recipient: nothing delivered */
        return read_reply(c, &r, secs, NULL);
    for (size_t i = 0, k = 0; i < n && k < (c->lmtp ? accepted : 1); i++) {
        if (res[i].st != DS_OK)
            continue;
        if (read_reply(c, &r, secs, NULL) != 0)
            return -1;
        k++;
        if (c->lmtp) {
            set_res(&res[i], status_of(r.code), r.text);
            continue;
        }
        for (size_t j = 0; j < n; j++)
            if (res[j].st == DS_OK)
                set_res(&res[j], status_of(r.code), r.text);
        break;
    }
    return 0;
}

int smtp_deliver(struct smtp_client *c, const char *sender, char *const *rcpts, size_t n,
                 const char *msg, size_t len, struct dresult *res)
{
    char err[300];
    all_res(res, n, DS_TEMP, "not attempted");
    if (c->fd < 0 && session_open(c, err, sizeof err) != 0) {
        all_res(res, n, DS_TEMP, err);
        return -1;
    }
    bool eight;
    size_t dlen;
    char *data = data_block(msg, len, &dlen, &eight);
    if (data == NULL) {
        all_res(res, n, DS_TEMP, "out of memory");
        return 0;
    }
    size_t accepted = 0;
    int code = envelope(c, sender, rcpts, n, dlen, eight, res, &accepted);
    int rc = 0;
    if (code == 354) {
        if (send_data(c, data, dlen, n, res, accepted) != 0)
            code = 0;
    } else if (code != 0) {
        struct reply r;
        if (send_all(c, "RSET\r\n", 6) != 0 || read_reply(c, &r, c->timeout, NULL) != 0)
            code = 0;
    }
    if (code == 0) {
        /* Lost connection: nothing is known to be delivered. */
        for (size_t i = 0; i < n; i++)
            if (res[i].st != DS_PERM)
                set_res(&res[i], DS_TEMP, "connection to the delivery target lost or timed out");
        drop(c);
    }
    free(data);
    return rc;
}
