/* The SMTP client (RFC 5321, 2920 PIPELINING, 3207 STARTTLS, 1870 SIZE,
 * 6152/6531 passthrough): one connection to one destination, which sends
 * jobs (one message, all its recipients for this destination) until the
 * destination's ready list is empty, with RSET after a failed transaction.
 *
 * An explicit state machine like the server's: every reply goes to the
 * handler of the current state. The envelope and body go out byte for byte
 * as stored (dot-stuffed on the wire). A recipient is recorded as sent only
 * after the final 250 to the data; a connection lost before that defers
 * it (a duplicate is possible, a loss is not: RFC 5321 6.1).
 *
 * "The final 250" means the whole last line of a 2xx reply to the end of
 * data, CRLF included. EOF, a reset, a timeout, half a line or a multi-line
 * reply cut short all leave the message undelivered, even when the primary
 * had stored it: it is sent again (RFC 1047's duplicate, chosen over a
 * loss). A reply that is not well formed (no three digits 2-5, neither
 * space nor hyphen after them, lines of one reply with different codes,
 * a line over MTA_LINE_MAX, more than MTA_REPLY_LINES lines) and a reply
 * nobody asked for end the connection the same way: the stream can no
 * longer be trusted to pair replies with commands. */
#include "sched_private.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "dns.h"
#include "log.h"

#define MTA_MAX_HOPS 16
#define MTA_LINE_MAX 4096
#define MTA_REPLY_LINES 100      /* EHLO replies are ~10 lines */
#define MTA_CONNECT_TIMEOUT 30

enum mta_state {
    M_RESOLVE,                   /* waiting for DNS */
    M_CONNECT,                   /* TCP connect under way */
    M_GREETING,                  /* waiting for 220 */
    M_EHLO,
    M_HELO,
    M_STARTTLS,
    M_TLS,                       /* handshake under way */
    M_READY,                     /* between transactions */
    M_MAIL,                      /* waiting for the MAIL reply */
    M_RCPT,                      /* waiting for RCPT replies */
    M_DATA,                      /* waiting for 354 */
    M_DOT,                       /* body sent, waiting for the final reply */
    M_RSET,
    M_QUIT,
};

struct mta_conn {
    struct mta_conn *prev, *next;
    struct scheduler *s;
    struct dest *d;
    struct dns_req *dreq;
    size_t nprimary;             /* fixed primary entries resolved so far */
    struct nexthop hops[MTA_MAX_HOPS];
    size_t nhops, hop;
    struct bufferevent *bev;
    enum mta_state state;
    bool pipelining, starttls, smtputf8, tls, established;
    bool dead;                   /* freed at the end of this loop pass */
    uint64_t maxsize;
    struct job *job;
    size_t rcpt_next;            /* next RCPT reply belongs to job->rcpt[i] */
    size_t accepted;
    int mail_code;
    char mail_reply[SCHED_REPLY_MAX];
    char relay[320];
    char reply[SCHED_REPLY_MAX]; /* the reply being read (lines joined) */
    size_t replylen;
    unsigned replylines;         /* lines of it read so far */
    char replycode[3];           /* its code, which every line must repeat */
    unsigned pending;            /* replies owed to us (commands sent) */
    char last_error[SCHED_REPLY_MAX];
};

static void conn_next_hop(struct mta_conn *c);
static void conn_close(struct mta_conn *c);
static void conn_ready(struct mta_conn *c);

/* ---- output ------------------------------------------------------------ */

static void send_line(struct mta_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void send_line(struct mta_conn *c, const char *fmt, ...)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\r\n", 2);
    c->pending++;
}

static void set_timeout(struct mta_conn *c, int64_t secs)
{
    struct timeval tv = { (time_t)secs, 0 };
    bufferevent_set_timeouts(c->bev, &tv, &tv);
}

/* ---- ending a job or a connection ------------------------------------- */

/* Every recipient without a final answer gets CODE and TEXT. */
static void job_fail_rest(struct mta_conn *c, int code, const char *text)
{
    if (c->job == NULL)
        return;
    for (size_t i = 0; i < c->job->n; i++) {
        struct job_rcpt *r = &c->job->rcpt[i];
        if (r->code >= 400 && r->code < 600 && r->reply[0])
            continue;            /* already refused with its own reply */
        r->code = code;
        snprintf(r->reply, sizeof r->reply, "%s", text);
    }
}

static void job_finish(struct mta_conn *c)
{
    struct job *j = c->job;
    c->job = NULL;
    if (j != NULL)
        sched_job_done(c->s, j, c->relay[0] ? c->relay : c->d->name);
}

static void conn_release_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    free(arg);
}

/* Unlinks C at once; the memory goes at the end of the loop pass, because
 * callers up the stack (read_cb) still look at c->dead. */
static void conn_free(struct mta_conn *c)
{
    struct scheduler *s = c->s;
    if (c->dead)
        return;
    c->dead = true;
    if (c->dreq != NULL)
        dns_cancel(c->dreq);
    c->dreq = NULL;
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    c->bev = NULL;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    sched_conn_gone(s, c->d);
    static const struct timeval zero = { 0, 0 };
    if (event_base_once(s->base, -1, EV_TIMEOUT, conn_release_cb, c, &zero) != 0)
        free(c);                 /* no event: nobody can be looking at it */
}

/* The connection ends: anything in flight is deferred with WHY. */
static void conn_abort(struct mta_conn *c, const char *why)
{
    job_fail_rest(c, 0, why);
    job_finish(c);
    conn_free(c);
}

static void conn_close(struct mta_conn *c)
{
    job_finish(c);
    conn_free(c);
}

/* No next hop would take us: the destination is down. */
static void dest_unreachable(struct mta_conn *c, const char *why)
{
    struct job *j = c->job;
    c->job = NULL;
    sched_dest_failed(c->s, c->d, why);
    if (j != NULL) {
        c->job = j;
        job_fail_rest(c, 0, why);
        job_finish(c);
    }
    conn_free(c);
}

/* This hop failed before a session was established: try the next one. */
static void hop_failed(struct mta_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void hop_failed(struct mta_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
    log_info("%s: %s", c->d->name, c->last_error);
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    c->hop++;
    conn_next_hop(c);
}

/* ---- transactions ------------------------------------------------------ */

static bool reply_ok(int code)
{
    return code >= 200 && code < 300;
}

/* Sends the body dot-stuffed, then the final dot. */
static int send_body(struct mta_conn *c)
{
    struct queue_envelope env;
    struct evbuffer *body = evbuffer_new();
    if (body == NULL || queue_get(c->s->q, c->job->env.id, &env, body) != 0) {
        if (body != NULL)
            evbuffer_free(body);
        return -1;
    }
    queue_envelope_free(&env);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t len = evbuffer_get_length(body);
    const char *p = (const char *)evbuffer_pullup(body, -1);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] != '\n')
            continue;
        if (p[start] == '.')
            evbuffer_add(out, ".", 1);
        evbuffer_add(out, p + start, i + 1 - start);
        start = i + 1;
    }
    if (start < len) {           /* a last line without CRLF: end it */
        if (p[start] == '.')
            evbuffer_add(out, ".", 1);
        evbuffer_add(out, p + start, len - start);
        evbuffer_add(out, "\r\n", 2);
    }
    evbuffer_add(out, ".\r\n", 3);
    c->pending++;
    evbuffer_free(body);
    return 0;
}

static void send_rcpt(struct mta_conn *c, size_t i)
{
    send_line(c, "RCPT TO:<%s>", c->job->rcpt[i].addr);
}

static bool job_refused_locally(struct mta_conn *c)
{
    const struct queue_envelope *e = &c->job->env;
    if (c->maxsize > 0 && e->size > c->maxsize) {
        job_fail_rest(c, 552, "552 5.3.4 message too big for the next hop");
        return true;
    }
    if ((e->flags & QENV_SMTPUTF8) && !c->smtputf8) {
        job_fail_rest(c, 553, "553 5.6.7 next hop does not support SMTPUTF8");
        return true;
    }
    return false;
}

static void txn_start(struct mta_conn *c)
{
    const struct queue_envelope *e = &c->job->env;
    c->rcpt_next = 0;
    c->accepted = 0;
    c->mail_code = 0;
    c->mail_reply[0] = '\0';
    char params[96] = "";
    size_t off = 0;
    if (c->maxsize > 0 || c->pipelining)
        off += (size_t)snprintf(params + off, sizeof params - off, " SIZE=%llu",
                                (unsigned long long)e->size);
    if (e->flags & QENV_8BITMIME)
        off += (size_t)snprintf(params + off, sizeof params - off, " BODY=8BITMIME");
    if (e->flags & QENV_SMTPUTF8)
        snprintf(params + off, sizeof params - off, " SMTPUTF8");
    send_line(c, "MAIL FROM:<%s>%s", e->sender, params);
    c->state = M_MAIL;
    if (!c->pipelining)
        return;
    for (size_t i = 0; i < c->job->n; i++)
        send_rcpt(c, i);
    send_line(c, "DATA");
}

/* The transaction is over (well or not): record it, then the next one.
 * The results are in the log file when job_finish returns (a crash of the
 * daemon repeats only the message in flight); the disk has them within the
 * queue's sync interval, which the next message does not wait for. */
static void txn_end(struct mta_conn *c, bool clean)
{
    job_finish(c);
    if (clean) {
        conn_ready(c);
        return;
    }
    send_line(c, "RSET");
    c->state = M_RSET;
}

static void on_mail(struct mta_conn *c, int code)
{
    c->mail_code = code;
    snprintf(c->mail_reply, sizeof c->mail_reply, "%s", c->reply);
    if (!reply_ok(code))
        job_fail_rest(c, code, c->reply);
    if (c->pipelining) {
        c->state = M_RCPT;
        return;
    }
    if (!reply_ok(code)) {
        txn_end(c, false);
        return;
    }
    c->state = M_RCPT;
    send_rcpt(c, 0);
}

static void on_rcpt(struct mta_conn *c, int code)
{
    struct job_rcpt *r = &c->job->rcpt[c->rcpt_next++];
    if (reply_ok(c->mail_code)) {
        r->code = code;
        snprintf(r->reply, sizeof r->reply, "%s", c->reply);
        if (reply_ok(code))
            c->accepted++;
    }
    if (c->rcpt_next < c->job->n) {
        if (!c->pipelining)
            send_rcpt(c, c->rcpt_next);
        return;
    }
    c->state = M_DATA;
    if (c->pipelining)
        return;
    if (c->accepted == 0) {
        txn_end(c, false);
        return;
    }
    send_line(c, "DATA");
}

static void on_data(struct mta_conn *c, int code)
{
    if (code == 354 && c->accepted > 0) {
        if (send_body(c) != 0) {
            log_err("%s: cannot read the message back from the queue", c->job->env.id);
            conn_abort(c, "local error: cannot read message");
            return;
        }
        set_timeout(c, c->s->cfg->limits.data_timeout);
        c->state = M_DOT;
        return;
    }
    if (code == 354) {           /* nobody accepted, yet it wants data */
        evbuffer_add(bufferevent_get_output(c->bev), ".\r\n", 3);
        c->pending++;
        c->state = M_DOT;
        c->accepted = 0;
        return;
    }
    if (code < 400) {
        /* A 2xx (or another 3xx) to DATA: no body went out, so it must not
         * count for the recipients, and the peer's state is anyone's
         * guess (a reply stream one behind looks just like this). */
        char text[1024];
        snprintf(text, sizeof text, "protocol error: host %s said \"%.300s\" in reply to DATA",
                 c->relay, c->reply);
        log_info("%s: %s: %s", c->job->env.id, c->d->name, text);
        conn_abort(c, text);
        return;
    }
    /* The recipients it accepted still get DATA's refusal. */
    for (size_t i = 0; i < c->job->n; i++)
        if (reply_ok(c->job->rcpt[i].code)) {
            c->job->rcpt[i].code = code;
            snprintf(c->job->rcpt[i].reply, sizeof c->job->rcpt[i].reply, "%s", c->reply);
        }
    txn_end(c, false);
}

static void on_dot(struct mta_conn *c, int code)
{
    set_timeout(c, c->s->cfg->limits.command_timeout);
    for (size_t i = 0; c->accepted > 0 && i < c->job->n; i++)
        if (reply_ok(c->job->rcpt[i].code)) {
            c->job->rcpt[i].code = code;
            snprintf(c->job->rcpt[i].reply, sizeof c->job->rcpt[i].reply, "%s", c->reply);
        }
    txn_end(c, reply_ok(code));
}

/* Next job, or QUIT when the destination has nothing more. */
static void conn_ready(struct mta_conn *c)
{
    c->state = M_READY;
    while ((c->job = sched_take_job(c->s, c->d)) != NULL) {
        if (sched_job_prune(c->s, c->job) == 0) {
            job_free(c->job);
            c->job = NULL;
            continue;
        }
        if (!job_refused_locally(c)) {
            txn_start(c);
            return;
        }
        job_finish(c);
    }
    send_line(c, "QUIT");
    c->state = M_QUIT;
}

/* ---- session set-up ---------------------------------------------------- */

static bool tls_required(const struct mta_conn *c)
{
    return c->d->dom != NULL && c->d->dom->tls != TLSOUT_MAY;
}

static void parse_ehlo_line(struct mta_conn *c, const char *kw)
{
    if (strncasecmp(kw, "PIPELINING", 10) == 0)
        c->pipelining = true;
    else if (strncasecmp(kw, "STARTTLS", 8) == 0)
        c->starttls = true;
    else if (strncasecmp(kw, "SMTPUTF8", 8) == 0)
        c->smtputf8 = true;
    else if (strncasecmp(kw, "SIZE", 4) == 0)
        c->maxsize = strtoull(kw + 4, NULL, 10);
}

static void session_established(struct mta_conn *c)
{
    if (!c->established) {
        c->established = true;
        sched_dest_up(c->s, c->d);
    }
    conn_ready(c);
}

static void on_ehlo(struct mta_conn *c, int code)
{
    if (!reply_ok(code)) {
        if (c->state == M_HELO || c->tls) {
            hop_failed(c, "host %s refused to talk to me: %s", c->relay, c->reply);
            return;
        }
        send_line(c, "HELO %s", c->s->cfg->hostname);
        c->state = M_HELO;
        return;
    }
    if (c->starttls && !c->tls) {
        send_line(c, "STARTTLS");
        c->state = M_STARTTLS;
        return;
    }
    if (tls_required(c) && !c->tls) {
        hop_failed(c, "TLS is required, but was not offered by host %s", c->relay);
        return;
    }
    session_established(c);
}

static bool tls_peer_ok(struct mta_conn *c, SSL *ssl)
{
    const struct bmx_domain *dom = c->d->dom;
    if (dom == NULL || dom->tls == TLSOUT_MAY || dom->tls == TLSOUT_ENCRYPT)
        return true;
    if (dom->tls == TLSOUT_VERIFY)
        return SSL_get_verify_result(ssl) == X509_V_OK
               && SSL_get0_peer_certificate(ssl) != NULL;
    X509 *cert = SSL_get0_peer_certificate(ssl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (cert == NULL || dom->fingerprint == NULL
        || X509_digest(cert, EVP_sha256(), md, &mdlen) != 1)
        return false;
    char hex[2 * EVP_MAX_MD_SIZE + 8] = "sha256:";
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(hex + 7 + 2 * i, 3, "%02x", md[i]);
    return strcasecmp(hex, dom->fingerprint) == 0;
}

static void read_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static void start_tls(struct mta_conn *c)
{
    SSL *ssl = SSL_new(c->s->tls);
    if (ssl == NULL) {
        hop_failed(c, "cannot start TLS with %s", c->relay);
        return;
    }
    const char *host = c->hops[c->hop].host;
    SSL_set_tlsext_host_name(ssl, host);
    if (c->d->dom != NULL && c->d->dom->tls == TLSOUT_VERIFY)
        SSL_set1_host(ssl, host);
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        c->s->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (tb == NULL) {
        SSL_free(ssl);
        hop_failed(c, "cannot start TLS with %s", c->relay);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
    c->bev = tb;
    c->state = M_TLS;
    bufferevent_setcb(tb, read_cb, NULL, event_cb, c);
    set_timeout(c, c->s->cfg->limits.command_timeout);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
}

static void on_starttls(struct mta_conn *c, int code)
{
    if (code == 220) {
        start_tls(c);
        return;
    }
    if (tls_required(c)) {
        hop_failed(c, "host %s refused STARTTLS: %s", c->relay, c->reply);
        return;
    }
    session_established(c);      /* opportunistic: go on in plaintext */
}

static void tls_done(struct mta_conn *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    if (ssl == NULL || !tls_peer_ok(c, ssl)) {
        hop_failed(c, "TLS peer verification failed for %s", c->relay);
        return;
    }
    c->tls = true;
    c->pipelining = c->starttls = c->smtputf8 = false;
    c->maxsize = 0;
    log_info("%s: TLS connection established to %s: %s with cipher %s", c->d->name,
             c->relay, SSL_get_version(ssl), SSL_get_cipher_name(ssl));
    send_line(c, "EHLO %s", c->s->cfg->hostname);
    c->state = M_EHLO;
}

/* ---- replies ----------------------------------------------------------- */

static void dispatch_reply(struct mta_conn *c, int code)
{
    switch (c->state) {
    case M_GREETING:
        if (code != 220) {
            hop_failed(c, "host %s refused to talk to me: %s", c->relay, c->reply);
            return;
        }
        send_line(c, "EHLO %s", c->s->cfg->hostname);
        c->state = M_EHLO;
        return;
    case M_EHLO:
    case M_HELO:
        on_ehlo(c, code);
        return;
    case M_STARTTLS:
        on_starttls(c, code);
        return;
    case M_MAIL:
        on_mail(c, code);
        return;
    case M_RCPT:
        on_rcpt(c, code);
        return;
    case M_DATA:
        on_data(c, code);
        return;
    case M_DOT:
        on_dot(c, code);
        return;
    case M_RSET:
        conn_ready(c);
        return;
    case M_QUIT:
        conn_close(c);
        return;
    default:
        conn_abort(c, "unexpected reply");
        return;
    }
}

/* A reply line: three digits 2-5/0-9/0-9, then nothing, a space or a
 * hyphen; a continuation repeats the first line's code. */
static bool reply_line_ok(const struct mta_conn *c, const char *line, size_t n)
{
    if (n < 3 || n > MTA_LINE_MAX || line[0] < '2' || line[0] > '5')
        return false;
    for (int i = 1; i < 3; i++)
        if (line[i] < '0' || line[i] > '9')
            return false;
    if (n > 3 && line[3] != ' ' && line[3] != '-')
        return false;
    return c->replylines == 0 || memcmp(line, c->replycode, 3) == 0;
}

/* Appends a line's text to c->reply (lines joined by a space, the code
 * once). Bytes outside printable ASCII become '?': the text goes into our
 * log and into DSNs, where a primary must not write control characters. */
static void reply_append(struct mta_conn *c, const char *line, size_t n)
{
    size_t room = sizeof c->reply - c->replylen - 1;
    size_t take = c->replylines == 0 ? n : (n > 4 ? n - 4 : 0);
    const char *src = c->replylines == 0 ? line : line + 4;
    if (c->replylines > 0 && room > 1 && take > 0) {
        c->reply[c->replylen++] = ' ';
        room--;
    }
    if (take > room)
        take = room;
    for (size_t i = 0; i < take; i++)
        c->reply[c->replylen + i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
    c->replylen += take;
    c->reply[c->replylen] = '\0';
}

/* Reads one whole (possibly multi-line) reply; false when incomplete. */
static bool read_reply(struct mta_conn *c, struct evbuffer *in, int *code, bool *bad)
{
    for (;;) {
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (line == NULL) {
            *bad = evbuffer_get_length(in) > MTA_LINE_MAX;
            return false;
        }
        if (!reply_line_ok(c, line, n) || c->replylines >= MTA_REPLY_LINES) {
            free(line);
            *bad = true;
            return false;
        }
        if (c->replylines > 0 && c->state == M_EHLO && n > 4)
            parse_ehlo_line(c, line + 4);   /* the first line is the name */
        if (c->replylines == 0) {
            memcpy(c->replycode, line, 3);
            c->replylen = 0;
        }
        reply_append(c, line, n);
        c->replylines++;
        bool last = n == 3 || line[3] == ' ';
        *code = atoi(line);
        free(line);
        if (last) {
            c->replylines = 0;
            return true;
        }
    }
}

/* The reply stream is unusable: before the session is established, try
 * the next hop; after, end the connection (what is in flight is
 * deferred). */
static void reply_failed(struct mta_conn *c, const char *what)
{
    snprintf(c->reply, sizeof c->reply, "%s %s", what, c->relay);
    if (c->job == NULL && c->state > M_TLS)
        /* nothing in flight to carry the reason into the log */
        log_warn("%s: %s; connection closed", c->d->name, c->reply);
    if (c->state <= M_TLS)
        hop_failed(c, "%s", c->reply);
    else
        conn_abort(c, c->reply);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct mta_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (c->bev != bev)
            return;              /* STARTTLS swapped the buffers */
        int code = 0;
        bool bad = false;
        if (!read_reply(c, in, &code, &bad)) {
            if (bad)
                reply_failed(c, "malformed reply from");
            return;
        }
        if (c->pending == 0) {
            reply_failed(c, "more replies than commands from");
            return;
        }
        /* Bytes behind the last reply we were owed: the peer is ahead of
         * us (or injects after STARTTLS). This reply still answers our
         * last command; the connection ends after it. */
        bool extra = --c->pending == 0 && evbuffer_get_length(in) > 0;
        dispatch_reply(c, code);
        if (c->dead)
            return;
        if (extra) {
            reply_failed(c, "more replies than commands from");
            return;
        }
        if (c->state == M_TLS)
            return;
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct mta_conn *c = arg;
    if (bev != c->bev)
        return;
    if (what & BEV_EVENT_CONNECTED) {
        if (c->state == M_TLS) {
            tls_done(c);
            return;
        }
        c->state = M_GREETING;
        c->pending = 1;          /* the greeting */
        set_timeout(c, c->s->cfg->limits.command_timeout);
        return;
    }
    const char *why = (what & BEV_EVENT_TIMEOUT) ? "timeout" : (what & BEV_EVENT_EOF)
                      ? "lost connection" : "connection error";
    if (c->state <= M_TLS) {
        hop_failed(c, "connect to %s: %s%s%s", c->relay, why,
                   errno ? ": " : "", errno ? strerror(errno) : "");
        return;
    }
    if (c->state == M_QUIT) {
        conn_close(c);
        return;
    }
    char text[SCHED_REPLY_MAX];
    snprintf(text, sizeof text, "%s with %s while in state %d", why, c->relay, (int)c->state);
    log_info("%s: %s", c->d->name, text);
    conn_abort(c, text);
}

/* ---- connecting -------------------------------------------------------- */

static void format_relay(struct mta_conn *c, const struct nexthop *h)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (h->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&h->addr;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&h->addr;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
    }
    snprintf(c->relay, sizeof c->relay, "%s[%s]:%d", h->host, ip, port);
}

static void conn_next_hop(struct mta_conn *c)
{
    if (c->hop >= c->nhops) {
        dest_unreachable(c, c->last_error[0] ? c->last_error : "no next hop");
        return;
    }
    const struct nexthop *h = &c->hops[c->hop];
    format_relay(c, h);
    c->pipelining = c->starttls = c->smtputf8 = c->tls = false;
    c->maxsize = 0;
    c->replylen = 0;
    c->replylines = 0;
    c->pending = 0;
    c->bev = bufferevent_socket_new(c->s->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        dest_unreachable(c, "out of memory");
        return;
    }
    bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
    set_timeout(c, MTA_CONNECT_TIMEOUT < c->s->cfg->limits.command_timeout
                       ? MTA_CONNECT_TIMEOUT : c->s->cfg->limits.command_timeout);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->state = M_CONNECT;
    errno = 0;
    if (bufferevent_socket_connect(c->bev, (const struct sockaddr *)&h->addr,
                                   (int)h->addrlen) != 0)
        hop_failed(c, "connect to %s: %s", c->relay, strerror(errno));
}

static void resolved_cb(void *arg, enum dns_status st, const struct nexthop *hops,
                        size_t n, const char *why);

static void resolve_next_primary(struct mta_conn *c)
{
    const struct strlist *p = &c->d->dom->primary;
    c->dreq = dns_host(c->s->dns, p->v[c->nprimary], c->s->cfg->queue.mx_port,
                       resolved_cb, c);
    if (c->dreq == NULL)
        dest_unreachable(c, "out of memory");
}

static void resolved_cb(void *arg, enum dns_status st, const struct nexthop *hops,
                        size_t n, const char *why)
{
    struct mta_conn *c = arg;
    c->dreq = NULL;
    for (size_t i = 0; st == DNS_OK && i < n && c->nhops < MTA_MAX_HOPS; i++)
        c->hops[c->nhops++] = hops[i];
    if (st != DNS_OK)
        snprintf(c->last_error, sizeof c->last_error, "%s", why ? why : "DNS failure");
    bool fixed = c->d->dom != NULL && c->d->dom->primary.n > 0;
    if (fixed && ++c->nprimary < c->d->dom->primary.n) {
        resolve_next_primary(c);
        return;
    }
    if (!fixed && st == DNS_NOTFOUND && c->d->dom == NULL) {
        /* A foreign domain that does not exist (a DSN to a dead sender
         * domain): nothing will ever take this mail. */
        c->job = sched_take_job(c->s, c->d);
        while (c->job != NULL) {
            job_fail_rest(c, 550, why ? why : "550 5.1.2 domain not found");
            job_finish(c);
            c->job = sched_take_job(c->s, c->d);
        }
        conn_free(c);
        return;
    }
    c->hop = 0;
    conn_next_hop(c);
}

int mta_start(struct scheduler *s, struct dest *d)
{
    struct mta_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -1;
    c->s = s;
    c->d = d;
    c->state = M_RESOLVE;
    c->next = s->conns;
    if (c->next != NULL)
        c->next->prev = c;
    s->conns = c;
    d->nconn++;
    if (d->dom != NULL && d->dom->primary.n > 0) {
        resolve_next_primary(c);
        return 0;
    }
    c->dreq = dns_route(s->dns, d->name, s->cfg->queue.mx_port, resolved_cb, c);
    if (c->dreq == NULL) {
        conn_free(c);
        return -1;
    }
    return 0;
}

void mta_free_all(struct scheduler *s)
{
    while (s->conns != NULL) {
        struct mta_conn *c = s->conns;
        if (c->job != NULL) {
            job_free(c->job);    /* leased: due again after the lease */
            c->job = NULL;
        }
        conn_free(c);
    }
}

SSL_CTX *mta_tls_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_default_verify_paths(ctx);
    /* The handshake never fails on the certificate: tls = "may"/"encrypt"
     * accept any; "verify"/"fingerprint" are checked afterwards. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    return ctx;
}
