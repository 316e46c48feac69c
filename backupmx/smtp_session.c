/* SMTP server session (RFC 5321, 1870, 2920, 3207, 2034, 6152, 6531).
 *
 * An explicit state machine: every command goes through one table to its
 * handler, each handler checks its state first, and every state change goes
 * through session_enter(). Replies are appended to the output buffer and
 * leave in one write per event-loop pass, which is what makes PIPELINING
 * cheap. While a message is being committed (S_COMMIT) input is left in the
 * buffer, so pipelined commands are answered strictly in order. */
#include "smtp_session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "log.h"
#include "policy.h"
#include "queue.h"
#include "smtp_data.h"
#include "smtp_parse.h"
#include "smtp_server.h"
#include "tls.h"
#include "verify.h"
#include "cidr.h"
#include "scheduler.h"
#include "catchall_store.h"

#define CMD_LINE_MAX 4096        /* longer command lines are refused */
#define DATA_CHUNK_MAX 8192      /* an LF-less run this long is an over-long line */
#define READ_HIGH_WATER 65536
#define WRITE_HIGH_WATER 65536   /* unsent replies before we stop reading */
#define CLOSE_GRACE_MS 5000

enum smtp_state {
    S_INIT,                      /* banner sent, waiting for HELO/EHLO */
    S_HELO,                      /* greeted, no transaction */
    S_MAIL,                      /* MAIL accepted */
    S_RCPT,                      /* at least one RCPT accepted */
    S_DATA,                      /* reading the message */
    S_COMMIT,                    /* message handed to the queue, awaiting the disk */
    S_QUIT,                      /* last reply being flushed, then close */
};

static const char *const state_names[] = {
    "CONNECT", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "QUIT",
};

struct smtp_session {
    struct smtp_server *srv;
    struct smtp_session *prev, *next;
    struct bufferevent *bev;
    struct event *close_timer;
    struct event *flush_ev;      /* plain sessions: replies written directly */
    struct timespec close_start;
    char ip[INET6_ADDRSTRLEN];
    enum smtp_state state;
    enum smtp_verb last_verb;
    bool esmtp;
    bool tls;
    bool discard_line;           /* inside a too-long command line */
    bool commit_pending;         /* the queue still holds our callback */
    bool dead;                   /* connection gone; free when the queue calls back */
    bool released;               /* connection slot given back */
    bool out_stalled;            /* input left until the client reads our replies */
    bool line_open;              /* a partial line is buffered, */
    struct timespec line_start;  /* ... since then */
    char helo[256];
    char tlsinfo[160];
    char qid[QUEUE_ID_LEN + 1];
    struct mailaddr sender;
    struct smtp_params params;
    struct verify_req *vreq;     /* a RCPT waiting for its callout */
    struct mailaddr vrcpt;       /* ... for this address */
    const struct bmx_domain *vdom;
    char **rcpt;
    const struct bmx_mailbox **rcpt_mbox;   /* catch-all mailbox, NULL = queue */
    size_t nrcpt;
    struct evbuffer *msg;
    struct data_state data;
    unsigned errors;
    unsigned ncmd[CMD_COUNT];
};

static void session_read(struct smtp_session *s);
static void session_close(struct smtp_session *s);
static void session_free(struct smtp_session *s);
static void session_setup_bev(struct smtp_session *s);
static bool too_many_errors(struct smtp_session *s);
static void session_timeout(struct smtp_session *s);

/* ---- replies ---------------------------------------------------------- */

static void reply(struct smtp_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply(struct smtp_session *s, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof text)
        n = sizeof text - 1;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    evbuffer_add(out, text, (size_t)n);
    evbuffer_add(out, "\r\n", 2);
    if (text[0] == '4' || text[0] == '5')
        s->errors++;
    if (!s->tls && s->flush_ev != NULL)
        event_active(s->flush_ev, EV_TIMEOUT, 0);
}

static const char *proto_name(const struct smtp_session *s)
{
    if (s->params.smtputf8)
        return s->tls ? "UTF8SMTPS" : "UTF8SMTP";
    if (!s->esmtp)
        return "SMTP";
    return s->tls ? "ESMTPS" : "ESMTP";
}

static void log_reject(struct smtp_session *s, const char *verb,
                       const char *to, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sends a rejection and logs it Postfix-style. */
static void log_reject(struct smtp_session *s, const char *verb,
                       const char *to, const char *fmt, ...)
{
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    reply(s, "%s", text);
    log_info("%s%sreject: %s from unknown[%s]: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
             s->qid[0] ? s->qid : "NOQUEUE", ": ", verb, s->ip, text,
             s->state >= S_MAIL ? s->sender.full : "", to ? to : "",
             proto_name(s), s->helo);
}

/* ---- state ------------------------------------------------------------ */

static void session_enter(struct smtp_session *s, enum smtp_state st)
{
    if (s->state == st)
        return;
    log_debug("smtp %s: %s -> %s", s->ip, state_names[s->state], state_names[st]);
    bool was_data = s->state == S_DATA;
    s->state = st;
    if (st == S_DATA)
        bufferevent_set_timeouts(s->bev, &s->srv->data_timeout, &s->srv->data_timeout);
    else if (was_data)
        bufferevent_set_timeouts(s->bev, &s->srv->cmd_timeout, &s->srv->cmd_timeout);
}

static void txn_reset(struct smtp_session *s)
{
    for (size_t i = 0; i < s->nrcpt; i++)
        free(s->rcpt[i]);
    free(s->rcpt);
    free(s->rcpt_mbox);
    s->rcpt = NULL;
    s->rcpt_mbox = NULL;
    s->nrcpt = 0;
    memset(&s->sender, 0, sizeof s->sender);
    memset(&s->params, 0, sizeof s->params);
    s->qid[0] = '\0';
    if (s->msg != NULL)
        evbuffer_drain(s->msg, evbuffer_get_length(s->msg));
    if (s->state != S_INIT && s->state != S_QUIT)
        session_enter(s, S_HELO);
}

/* ---- command handlers ------------------------------------------------- */

static bool helo_arg_ok(const char *a)
{
    if (*a == '\0' || strlen(a) > 255)
        return false;
    for (; *a; a++)
        if ((unsigned char)*a <= ' ' || (unsigned char)*a >= 127)
            return false;
    return true;
}

static bool helo_common(struct smtp_session *s, const char *args, bool esmtp)
{
    if (!helo_arg_ok(args)) {
        reply(s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        return false;
    }
    if (s->state == S_INIT)
        session_enter(s, S_HELO);
    txn_reset(s);
    snprintf(s->helo, sizeof s->helo, "%s", args);
    s->esmtp = esmtp;
    return true;
}

static void cmd_helo(struct smtp_session *s, const char *args)
{
    if (helo_common(s, args, false))
        reply(s, "250 %s", s->srv->cfg->hostname);
}

static void cmd_ehlo(struct smtp_session *s, const char *args)
{
    if (!helo_common(s, args, true))
        return;
    const struct bmx_config *cfg = s->srv->cfg;
    reply(s, "250-%s", cfg->hostname);
    reply(s, "250-PIPELINING");
    reply(s, "250-SIZE %llu", (unsigned long long)cfg->limits.message_size);
    if (cfg->etrn.enabled)
        reply(s, "250-ETRN");
    if (s->srv->tls != NULL && !s->tls)
        reply(s, "250-STARTTLS");
    reply(s, "250-ENHANCEDSTATUSCODES");
    reply(s, "250-8BITMIME");
    reply(s, "250 SMTPUTF8");
}

static bool need_helo(struct smtp_session *s)
{
    if (s->state != S_INIT)
        return true;
    reply(s, "503 5.5.1 Error: send HELO/EHLO first");
    return false;
}

static void cmd_mail(struct smtp_session *s, const char *args)
{
    if (!need_helo(s))
        return;
    if (s->state != S_HELO) {
        reply(s, "503 5.5.1 Error: nested MAIL command");
        return;
    }
    const char *bad;
    struct mailaddr a;
    struct smtp_params p;
    enum param_status st = smtp_parse_path_args(args, true, &a, &p, &bad);
    uint64_t limit = s->srv->cfg->limits.message_size;
    switch (st) {
    case PARAM_OK:
    case PARAM_ROUTING:          /* a route in a reverse path is ignored (RFC 5321 4.1.1.2) */
        break;
    case PARAM_NOPATH:
        reply(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
        return;
    case PARAM_ADDR_SYNTAX:
    case PARAM_ADDR_TOOLONG:
        reply(s, "501 5.1.7 Bad sender address syntax");
        return;
    case PARAM_BAD_VALUE:
        reply(s, "501 5.5.4 Bad parameter value: %.64s", bad);
        return;
    case PARAM_UNKNOWN:
        reply(s, "555 5.5.4 Unsupported option: %.64s", bad);
        return;
    }
    if ((p.size_set || p.body || p.smtputf8) && !s->esmtp) {
        reply(s, "555 5.5.4 Parameters need EHLO");
        return;
    }
    if (a.nonascii && !p.smtputf8) {
        reply(s, "553 5.6.7 Non-ASCII sender address needs SMTPUTF8");
        return;
    }
    if (p.size_set && p.size > limit) {
        reply(s, "552 5.3.4 Message size exceeds fixed limit");
        return;
    }
    s->sender = a;
    s->params = p;
    queue_new_id(s->srv->queue, s->qid);
    log_info("%s: client=unknown[%s]", s->qid, s->ip);
    session_enter(s, S_MAIL);
    reply(s, "250 2.1.0 Ok");
}

static bool rcpt_duplicate(const struct smtp_session *s, const char *addr)
{
    for (size_t i = 0; i < s->nrcpt; i++)
        if (strcasecmp(s->rcpt[i], addr) == 0)
            return true;
    return false;
}

static void rcpt_policy_reply(struct smtp_session *s, const struct mailaddr *a,
                              enum rcpt_verdict v)
{
    const char *to = a->full;
    switch (v) {
    case VERDICT_OK:
    case VERDICT_VERIFY:
        break;
    case VERDICT_RELAY_DENIED:
        log_reject(s, "RCPT", to, "550 5.7.1 <%s>: Relay access denied", to);
        return;
    case VERDICT_ROUTING:
        log_reject(s, "RCPT", to, "550 5.7.1 <%s>: Sender-specified routing is not allowed", to);
        return;
    case VERDICT_UNKNOWN_USER:
        log_reject(s, "RCPT", to, "550 5.1.1 <%s>: Recipient address rejected: User unknown", to);
        return;
    case VERDICT_UNVERIFIED:
        log_reject(s, "RCPT", to, "450 4.1.1 <%s>: Recipient address rejected: unverified address: primary unavailable", to);
        return;
    case VERDICT_TEMPFAIL:
        log_reject(s, "RCPT", to, "451 4.3.0 <%s>: Temporary lookup failure", to);
        return;
    }
}

static bool rcpt_grow(struct smtp_session *s)
{
    char **v = realloc(s->rcpt, (s->nrcpt + 1) * sizeof *v);
    if (v == NULL)
        return false;
    s->rcpt = v;
    const struct bmx_mailbox **m = realloc(s->rcpt_mbox, (s->nrcpt + 1) * sizeof *m);
    if (m == NULL)
        return false;
    s->rcpt_mbox = m;
    return true;
}

/* MB is the catch-all mailbox that gets the copy, NULL to queue it. */
static void rcpt_accept(struct smtp_session *s, const struct mailaddr *a,
                        const struct bmx_mailbox *mb)
{
    if (!rcpt_duplicate(s, a->full)) {
        char *copy = rcpt_grow(s) ? strdup(a->full) : NULL;
        if (copy == NULL) {
            reply(s, "451 4.3.0 Error: out of memory");
            return;
        }
        s->rcpt_mbox[s->nrcpt] = mb;
        s->rcpt[s->nrcpt++] = copy;
    }
    session_enter(s, S_RCPT);
    reply(s, "250 2.1.5 Ok");
}

/* A catch-all recipient: refused at RCPT time when its mailbox is full,
 * so the sender keeps the message rather than us bouncing it later. */
static void rcpt_catchall(struct smtp_session *s, const struct mailaddr *a,
                          const struct bmx_domain *dom)
{
    const struct bmx_mailbox *mb = config_find_mailbox(s->srv->cfg, dom->mailbox);
    uint64_t incoming = s->params.size_set ? s->params.size : 0;
    switch (mb == NULL ? CA_QUOTA_ERROR : catchall_quota_check(mb, incoming)) {
    case CA_QUOTA_OK:
        rcpt_accept(s, a, mb);
        return;
    case CA_QUOTA_FULL:
        log_reject(s, "RCPT", a->full, "452 4.2.2 <%s>: Mailbox full", a->full);
        return;
    case CA_QUOTA_ERROR:
        log_reject(s, "RCPT", a->full, "451 4.3.0 <%s>: Temporary mailbox error", a->full);
        return;
    }
}

static void rcpt_verified_cb(void *arg, enum verify_result r)
{
    struct smtp_session *s = arg;
    s->vreq = NULL;
    if (r == VERIFY_OK
        || (r == VERIFY_UNAVAILABLE && s->vdom->unverified == UNVERIFIED_ACCEPT))
        rcpt_accept(s, &s->vrcpt, NULL);
    else
        rcpt_policy_reply(s, &s->vrcpt, r == VERIFY_UNKNOWN ? VERDICT_UNKNOWN_USER
                                                            : VERDICT_UNVERIFIED);
    if (!too_many_errors(s))
        session_read(s);
}

/* RFC 5321 4.5.1: <postmaster> without a domain must be accepted. It is
 * queued for the postmaster of the first relay domain, whose primary is
 * the mail system we stand in for. */
static bool rcpt_postmaster(struct smtp_session *s, const char *args, struct mailaddr *a)
{
    if (strncasecmp(args, "TO:", 3) != 0)
        return false;
    args += 3;
    while (*args == ' ')
        args++;
    if (strncasecmp(args, "<postmaster>", 12) != 0 || (args[12] != '\0' && args[12] != ' '))
        return false;
    const struct bmx_config *cfg = s->srv->cfg;
    for (size_t i = 0; i < cfg->ndomains; i++) {
        if (cfg->domains[i].mode != MODE_RELAY
            || strlen(cfg->domains[i].name) + 12 > sizeof a->full)
            continue;
        memset(a, 0, sizeof *a);
        snprintf(a->local, sizeof a->local, "postmaster");
        snprintf(a->domain, sizeof a->domain, "%s", cfg->domains[i].name);
        memcpy(a->full, "postmaster@", 11);
        memcpy(a->full + 11, a->domain, strlen(a->domain) + 1);
        return true;
    }
    return false;
}

static void cmd_rcpt(struct smtp_session *s, const char *args)
{
    if (!need_helo(s))
        return;
    if (s->state != S_MAIL && s->state != S_RCPT) {
        reply(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    const char *bad;
    struct mailaddr a;
    struct smtp_params p;
    enum param_status st = smtp_parse_path_args(args, false, &a, &p, &bad);
    if (st == PARAM_ADDR_SYNTAX && rcpt_postmaster(s, args, &a))
        st = PARAM_OK;
    switch (st) {
    case PARAM_OK:
        break;
    case PARAM_ROUTING:
        rcpt_policy_reply(s, &a, VERDICT_ROUTING);
        return;
    case PARAM_NOPATH:
        reply(s, "501 5.5.4 Syntax: RCPT TO:<address>");
        return;
    case PARAM_ADDR_SYNTAX:
    case PARAM_ADDR_TOOLONG:
        reply(s, "501 5.1.3 Bad recipient address syntax");
        return;
    case PARAM_BAD_VALUE:
        reply(s, "501 5.5.4 Bad parameter value: %.64s", bad);
        return;
    case PARAM_UNKNOWN:
        reply(s, "555 5.5.4 Unsupported option: %.64s", bad);
        return;
    }
    if (a.nonascii && !s->params.smtputf8) {
        reply(s, "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8");
        return;
    }
    if (s->nrcpt >= (size_t)s->srv->cfg->limits.recipients) {
        reply(s, "452 4.5.3 Error: too many recipients");
        return;
    }
    const struct bmx_domain *dom;
    enum rcpt_verdict v = policy_check_rcpt(s->srv->policy, &a, &dom);
    if (v != VERDICT_OK && v != VERDICT_VERIFY) {
        rcpt_policy_reply(s, &a, v);
        return;
    }
    if (dom->mode == MODE_CATCHALL) {
        rcpt_catchall(s, &a, dom);
        return;
    }
    if (v == VERDICT_OK) {
        rcpt_accept(s, &a, NULL);
        return;
    }
    s->vrcpt = a;
    s->vdom = dom;
    s->vreq = verify_start(s->srv->verify, dom, a.full, rcpt_verified_cb, s);
    if (s->vreq == NULL)
        reply(s, "451 4.3.0 Error: out of memory");
}

static void add_received(struct smtp_session *s)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z (%Z)", &tm);
    evbuffer_add_printf(s->msg, "Received: from %s (unknown [%s])\r\n"
                        "\tby %s (backupmx) with %s id %s",
                        s->helo, s->ip, s->srv->cfg->hostname, proto_name(s), s->qid);
    if (s->tls)
        evbuffer_add_printf(s->msg, "\r\n\t(using %s)", s->tlsinfo);
    if (s->nrcpt == 1)
        evbuffer_add_printf(s->msg, "\r\n\tfor <%s>", s->rcpt[0]);
    evbuffer_add_printf(s->msg, "; %s\r\n", date);
}

static void cmd_data(struct smtp_session *s, const char *args)
{
    if (!need_helo(s))
        return;
    if (s->state == S_HELO) {
        reply(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    if (s->state != S_RCPT) {
        reply(s, "503 5.5.1 Error: need RCPT command");
        return;
    }
    if (*args != '\0') {
        reply(s, "501 5.5.4 Syntax: DATA");
        return;
    }
    if (s->msg == NULL && (s->msg = evbuffer_new()) == NULL) {
        reply(s, "451 4.3.0 Error: out of memory");
        return;
    }
    add_received(s);
    data_begin(&s->data, s->srv->cfg->limits.message_size);
    session_enter(s, S_DATA);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void cmd_rset(struct smtp_session *s, const char *args)
{
    (void)args;
    txn_reset(s);
    reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct smtp_session *s, const char *args)
{
    (void)args;
    reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(struct smtp_session *s, const char *args)
{
    (void)args;
    reply(s, "221 2.0.0 Bye");
    session_close(s);
}

static void cmd_help(struct smtp_session *s, const char *args)
{
    (void)args;
    reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY%s%s",
          s->srv->tls ? " STARTTLS" : "", s->srv->cfg->etrn.enabled ? " ETRN" : "");
}

static void cmd_vrfy(struct smtp_session *s, const char *args)
{
    (void)args;
    reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_not_impl(struct smtp_session *s, const char *args)
{
    (void)args;
    reply(s, "502 5.5.1 Error: command not implemented");
}

static void cmd_unknown(struct smtp_session *s, const char *args)
{
    (void)args;
    reply(s, "500 5.5.2 Error: command not recognized");
}

/* RFC 1985: "ETRN domain", "ETRN @domain" (and subdomains) and
 * "ETRN #queue" (we have one queue per domain, so the same thing). */
static void cmd_etrn(struct smtp_session *s, const char *args)
{
    if (!s->srv->cfg->etrn.enabled) {
        cmd_not_impl(s, args);
        return;
    }
    if (!need_helo(s))
        return;
    if (s->state != S_HELO) {
        reply(s, "503 5.5.1 Error: ETRN not allowed in a mail transaction");
        return;
    }
    const char *node = args;
    if (*node == '@' || *node == '#')
        node++;
    if (*node == '\0' || strchr(node, ' ') != NULL || strlen(node) > 255) {
        reply(s, "501 5.5.4 Syntax: ETRN domain");
        return;
    }
    if (!cidr_list_match(&s->srv->cfg->etrn.allow, s->ip)) {
        log_reject(s, "ETRN", NULL, "459 4.7.1 <%s>: client not allowed to ETRN", node);
        return;
    }
    const struct bmx_domain *d = config_find_domain(s->srv->cfg, node);
    if (d == NULL || d->mode != MODE_RELAY) {
        log_reject(s, "ETRN", NULL, "459 4.7.1 <%s>: not a domain queued here", node);
        return;
    }
    int n = scheduler_flush(s->srv->sched, d->name);
    if (n < 0) {
        reply(s, "458 4.3.0 Unable to queue messages for node %s", d->name);
        return;
    }
    log_info("ETRN %s from unknown[%s]: %d messages due now", d->name, s->ip, n);
    reply(s, "250 2.0.0 Queuing for node %s started", d->name);
}

static void tls_begin(struct smtp_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    /* CVE-2011-0411: whatever was pipelined behind STARTTLS arrived in
     * plaintext and must not be executed inside the TLS session. */
    evbuffer_drain(in, evbuffer_get_length(in));
    reply(s, "220 2.0.0 Ready to start TLS");
    bufferevent_enable(s->bev, EV_WRITE);   /* the filter writes through it */
    SSL *ssl = SSL_new(s->srv->tls);
    struct bufferevent *tb = ssl ? bufferevent_openssl_filter_new(
        s->srv->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS) : NULL;
    if (tb == NULL) {
        if (ssl != NULL)
            SSL_free(ssl);
        log_warn("cannot start TLS for unknown[%s]", s->ip);
        session_close(s);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
    s->bev = tb;
    s->tls = true;
    /* RFC 3207 4.2: forget everything learned before TLS. */
    s->esmtp = false;
    s->helo[0] = '\0';
    txn_reset(s);
    session_enter(s, S_INIT);
    session_setup_bev(s);
}

static void cmd_starttls(struct smtp_session *s, const char *args)
{
    if (s->srv->tls == NULL) {
        cmd_not_impl(s, args);
        return;
    }
    if (s->tls) {
        reply(s, "554 5.5.1 Error: TLS already active");
        return;
    }
    if (*args != '\0') {
        reply(s, "501 5.5.4 Syntax: STARTTLS");
        return;
    }
    if (s->state == S_MAIL || s->state == S_RCPT) {
        reply(s, "503 5.5.1 Error: STARTTLS not allowed in a mail transaction");
        return;
    }
    tls_begin(s);
}

typedef void (*cmd_fn)(struct smtp_session *, const char *);

static const cmd_fn cmd_table[CMD_COUNT] = {
    [CMD_UNKNOWN] = cmd_unknown, [CMD_HELO] = cmd_helo, [CMD_EHLO] = cmd_ehlo,
    [CMD_MAIL] = cmd_mail, [CMD_RCPT] = cmd_rcpt, [CMD_DATA] = cmd_data,
    [CMD_RSET] = cmd_rset, [CMD_NOOP] = cmd_noop, [CMD_QUIT] = cmd_quit,
    [CMD_HELP] = cmd_help, [CMD_VRFY] = cmd_vrfy, [CMD_EXPN] = cmd_not_impl,
    [CMD_STARTTLS] = cmd_starttls, [CMD_ETRN] = cmd_etrn,
};

static void dispatch(struct smtp_session *s, const char *line)
{
    const char *args;
    enum smtp_verb v = smtp_parse_verb(line, &args);
    s->ncmd[v]++;
    s->last_verb = v;
    cmd_table[v](s, args);
}

/* ---- end of data and the commit --------------------------------------- */

static void stored_cb(void *arg, int error)
{
    struct smtp_session *s = arg;
    s->commit_pending = false;
    if (s->dead) {
        session_free(s);
        return;
    }
    if (error != 0) {
        log_warn("%s: queue commit failed: %s", s->qid, strerror(error));
        /* The log flush met a full disk: the same answer as a store refused
         * up front (data_done), so the client knows to come back later. */
        if (error == ENOSPC || error == EDQUOT)
            reply(s, "452 4.3.1 Insufficient system storage");
        else
            reply(s, "451 4.3.0 Error: queue file write error");
    } else {
        log_info("%s: from=<%s>, size=%zu, nrcpt=%zu (queue active)", s->qid,
                 s->sender.full, evbuffer_get_length(s->msg), s->nrcpt);
        reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
    }
    txn_reset(s);
    session_read(s);
}

static size_t queued_rcpts(const struct smtp_session *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nrcpt; i++)
        n += s->rcpt_mbox[i] == NULL;
    return n;
}

static int queue_message(struct smtp_session *s)
{
    size_t nq = queued_rcpts(s), j = 0;
    struct queue_rcpt *r = calloc(nq, sizeof *r);
    if (r == NULL)
        return -1;
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < s->nrcpt; i++) {
        if (s->rcpt_mbox[i] != NULL)
            continue;
        r[j].addr = s->rcpt[i];
        r[j].state = RCPT_DEFERRED;
        r[j].next_attempt = s->srv->sched == NULL ? now
                            : scheduler_first_attempt(s->srv->sched, s->rcpt[i], now);
        j++;
    }
    struct queue_envelope env = {
        .sender = s->sender.full, .helo = s->helo, .client_addr = s->ip,
        .client_name = "unknown", .arrival = now,
        .size = evbuffer_get_length(s->msg), .nrcpt = nq, .rcpt = r,
        .flags = (s->params.body == BODY_8BITMIME ? QENV_8BITMIME : 0)
                 | (s->params.smtputf8 ? QENV_SMTPUTF8 : 0),
    };
    memcpy(env.id, s->qid, sizeof env.id);
    int rc = queue_store(s->srv->queue, &env, s->msg, stored_cb, s);
    free(r);
    return rc;
}

static void store_failed(struct smtp_session *s, int error)
{
    if (error == ENOSPC || error == EDQUOT)
        reply(s, "452 4.3.1 Insufficient system storage");
    else
        reply(s, "451 4.3.0 Error: queue file write error");
    log_warn("%s: cannot store message from unknown[%s]: %s", s->qid, s->ip, strerror(error));
}

/* The catch-all copies are on disk (or were taken back): queue the rest,
 * or answer. A queue failure after the copies were made answers 4xx, and
 * the client's retry makes those copies twice: duplicates, never loss. */
static void catchall_stored_cb(void *arg, int error)
{
    struct smtp_session *s = arg;
    s->commit_pending = false;
    if (s->dead) {
        session_free(s);
        return;
    }
    if (error == 0 && queued_rcpts(s) > 0) {
        if (queue_message(s) == 0) {
            s->commit_pending = true;
            return;
        }
        error = errno;
    }
    if (error != 0) {
        store_failed(s, error);
    } else {
        log_info("%s: from=<%s>, size=%zu, nrcpt=%zu (delivered to mailbox)", s->qid,
                 s->sender.full, evbuffer_get_length(s->msg), s->nrcpt);
        reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
    }
    txn_reset(s);
    session_read(s);
}

/* Catch-all copies first (the writer thread syncs them in batches), then
 * the queue: if a copy fails, nothing was queued and the client retries
 * the whole transaction. */
static int store_message(struct smtp_session *s)
{
    if (queued_rcpts(s) == s->nrcpt)
        return queue_message(s);
    return catchall_store(s->srv->cawriter, s->srv->cfg->hostname, s->qid, s->sender.full,
                          s->rcpt, s->rcpt_mbox, s->nrcpt, s->msg, catchall_stored_cb, s);
}

static void data_done(struct smtp_session *s)
{
    switch (data_verdict(&s->data)) {
    case DATA_ACCEPT:
        break;
    case DATA_TOO_BIG:
        log_reject(s, "END-OF-MESSAGE", NULL, "552 5.3.4 Message size exceeds fixed limit");
        txn_reset(s);
        return;
    case DATA_BAD_EOL:
        log_reject(s, "END-OF-MESSAGE", NULL, "554 5.6.0 Message contains bare CR, bare LF or NUL characters");
        txn_reset(s);
        return;
    case DATA_LONG_LINE:
        log_reject(s, "END-OF-MESSAGE", NULL, "554 5.6.0 Message line exceeds 998 characters");
        txn_reset(s);
        return;
    case DATA_LOOP:
        log_reject(s, "END-OF-MESSAGE", NULL, "554 5.4.6 Too many hops: mail forwarding loop");
        txn_reset(s);
        return;
    }
    session_enter(s, S_COMMIT);
    if (store_message(s) == 0) {
        s->commit_pending = true;
        return;
    }
    store_failed(s, errno);
    txn_reset(s);
}

/* ---- input ------------------------------------------------------------ */

/* One DATA line, if a whole one is buffered. */
/* Every whole line in the input's first contiguous chunk, scanned in place:
 * per line, a memchr instead of libevent's search, pullup and drain. A
 * line that runs past the chunk is left to read_data_line. */
static bool read_data_lines_in_place(struct smtp_session *s, struct evbuffer *in)
{
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
        return false;
    const char *base = v.iov_base;
    size_t used = 0;
    bool end = false;
    while (!end && used < v.iov_len) {
        const char *lf = memchr(base + used, '\n', v.iov_len - used);
        if (lf == NULL || (size_t)(lf - (base + used)) >= DATA_CHUNK_MAX)
            break;
        size_t len = (size_t)(lf - (base + used)) + 1;
        end = data_feed_line(&s->data, base + used, len, s->msg);
        used += len;
    }
    if (used == 0)
        return false;
    evbuffer_drain(in, used);
    if (end)
        data_done(s);
    return true;
}

static bool read_data_line(struct smtp_session *s, struct evbuffer *in)
{
    if (read_data_lines_in_place(s, in))
        return true;
    size_t eol_len;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    if (p.pos < 0) {
        size_t n = evbuffer_get_length(in);
        if (n <= DATA_CHUNK_MAX)
            return false;
        /* Keep a trailing CR: with the LF that follows it is a CRLF, and
         * "\r\n.\r\n" must still end the data. */
        char last;
        if (evbuffer_ptr_set(in, &p, n - 1, EVBUFFER_PTR_SET) == 0
            && evbuffer_copyout_from(in, &p, &last, 1) == 1 && last == '\r')
            n--;
        data_feed_overlong(&s->data, n);
        evbuffer_drain(in, n);
        return true;
    }
    size_t len = (size_t)p.pos + 1;
    const char *line = (const char *)evbuffer_pullup(in, (ssize_t)len);
    bool end = data_feed_line(&s->data, line, len, s->msg);
    evbuffer_drain(in, len);
    if (end)
        data_done(s);
    return true;
}

static bool read_command_line(struct smtp_session *s, struct evbuffer *in)
{
    size_t eol_len;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    if (p.pos < 0) {
        size_t n = evbuffer_get_length(in);
        if (n <= CMD_LINE_MAX)
            return false;
        evbuffer_drain(in, n);
        if (!s->discard_line)
            reply(s, "500 5.5.2 Error: command line too long");
        s->discard_line = true;
        return true;
    }
    size_t len = (size_t)p.pos + 1;
    if (s->discard_line || len > CMD_LINE_MAX) {
        if (!s->discard_line)
            reply(s, "500 5.5.2 Error: command line too long");
        s->discard_line = false;
        evbuffer_drain(in, len);
        return true;
    }
    char line[CMD_LINE_MAX + 1];
    evbuffer_remove(in, line, len);
    if (len < 2 || line[len - 2] != '\r') {
        reply(s, "500 5.5.2 Error: bare <LF> received");
        return true;
    }
    line[len - 2] = '\0';
    if (memchr(line, '\r', len - 2) != NULL || strlen(line) != len - 2) {
        reply(s, "500 5.5.2 Error: bare <CR> or NUL in command");
        return true;
    }
    dispatch(s, line);
    return true;
}

static bool too_many_errors(struct smtp_session *s)
{
    if (s->errors < (unsigned)s->srv->cfg->limits.errors)
        return false;
    reply(s, "421 4.7.0 %s Error: too many errors", s->srv->cfg->hostname);
    log_info("too many errors after %s from unknown[%s]",
             smtp_verb_name(s->last_verb), s->ip);
    session_close(s);
    return true;
}

/* A client that sends commands but never reads the replies must not make
 * us buffer them without limit: past the mark its input stays in the
 * (bounded) input buffer, and write_cb resumes once the replies are out. */
static bool output_full(struct smtp_session *s)
{
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) <= WRITE_HIGH_WATER)
        return false;
    s->out_stalled = true;
    return true;
}

/* Like Postfix's smtpd_per_record_deadline: a line must arrive whole within
 * the phase's timeout. The bufferevent timeout restarts on every read, so
 * alone it would let a client sending a byte a second hold the session. */
static bool line_overdue(struct smtp_session *s, struct evbuffer *in)
{
    if (evbuffer_get_length(in) == 0) {
        s->line_open = false;
        return false;
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!s->line_open) {
        s->line_open = true;
        s->line_start = now;
        return false;
    }
    const struct timeval *limit = s->state == S_DATA ? &s->srv->data_timeout
                                                     : &s->srv->cmd_timeout;
    long long ms = (long long)(now.tv_sec - s->line_start.tv_sec) * 1000
                   + (now.tv_nsec - s->line_start.tv_nsec) / 1000000;
    return ms >= (long long)limit->tv_sec * 1000;
}

static void session_read(struct smtp_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    for (;;) {
        if (s->state == S_COMMIT || s->state == S_QUIT || s->vreq != NULL)
            return;
        if (output_full(s))
            return;
        struct bufferevent *bev = s->bev;
        bool progress = s->state == S_DATA ? read_data_line(s, in)
                                           : read_command_line(s, in);
        if (!progress) {
            if (line_overdue(s, in))
                session_timeout(s);
            return;
        }
        s->line_open = false;
        if (too_many_errors(s))
            return;
        if (s->bev != bev)       /* STARTTLS swapped the buffers */
            return;
    }
}

/* ---- bufferevent callbacks -------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct smtp_session *s = arg;
    if (bev != s->bev)
        return;
    session_read(s);
}

static size_t pending_output(struct smtp_session *s)
{
    size_t n = evbuffer_get_length(bufferevent_get_output(s->bev));
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    if (under != NULL)
        n += evbuffer_get_length(bufferevent_get_output(under));
    return n;
}

static void close_check(struct smtp_session *s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (now.tv_sec - s->close_start.tv_sec) * 1000
              + (now.tv_nsec - s->close_start.tv_nsec) / 1000000;
    if (pending_output(s) == 0 || ms > CLOSE_GRACE_MS) {
        session_free(s);
        return;
    }
    struct timeval tv = { 0, 20000 };
    evtimer_add(s->close_timer, &tv);
}

static void close_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    close_check(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct smtp_session *s = arg;
    if (bev != s->bev)
        return;
    if (s->state == S_QUIT) {
        close_check(s);
        return;
    }
    if (!s->tls)
        bufferevent_disable(bev, EV_WRITE);
    if (s->out_stalled) {        /* the client read our replies: go on */
        s->out_stalled = false;
        session_read(s);
    }
}

/* A plain session's replies are written at the end of the loop pass that
 * made them, straight to the socket: no write event is armed and disarmed
 * (two epoll_ctl calls) and no extra pass is spent per reply. What the
 * socket does not take is left to the bufferevent (EV_WRITE on), which then
 * calls write_cb as before. */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_session *s = arg;
    if (s->tls)
        return;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (evbuffer_get_length(out) == 0)
        return;
    /* The bufferevent keeps its output's start frozen against others'
     * draining; it unfreezes it the same way around its own writes. */
    evbuffer_unfreeze(out, 1);
    evbuffer_write(out, bufferevent_getfd(s->bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) > 0) {
        bufferevent_enable(s->bev, EV_WRITE);
        return;
    }
    write_cb(s->bev, s);
}

static void log_lost(struct smtp_session *s, const char *what)
{
    const char *where = s->state == S_DATA || s->state == S_COMMIT
                            ? state_names[s->state] : smtp_verb_name(s->last_verb);
    log_info("%s after %s from unknown[%s]", what, where, s->ip);
}

static void session_timeout(struct smtp_session *s)
{
    log_lost(s, "timeout");
    reply(s, "421 4.4.2 %s Error: timeout exceeded", s->srv->cfg->hostname);
    session_close(s);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct smtp_session *s = arg;
    if (bev != s->bev)
        return;
    if (what & BEV_EVENT_CONNECTED) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        if (ssl != NULL) {
            tls_describe(ssl, s->tlsinfo, sizeof s->tlsinfo);
            log_info("TLS connection established from unknown[%s]: %s", s->ip, s->tlsinfo);
        }
        return;
    }
    if (s->state == S_QUIT) {
        session_free(s);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        session_timeout(s);
        return;
    }
    log_lost(s, "lost connection");
    session_free(s);
}

static void session_setup_bev(struct smtp_session *s)
{
    bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
    bufferevent_set_timeouts(s->bev, &s->srv->cmd_timeout, &s->srv->cmd_timeout);
    bufferevent_setwatermark(s->bev, EV_READ, 0, READ_HIGH_WATER);
    /* TLS: the filter moves replies into the socket's buffer only while that
     * holds less than this, so output_full() sees what the client left unread. */
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    if (under != NULL)
        bufferevent_setwatermark(under, EV_WRITE, 0, WRITE_HIGH_WATER);
    if (under == NULL) {
        bufferevent_disable(s->bev, EV_WRITE);   /* flush_cb writes */
        bufferevent_enable(s->bev, EV_READ);
        return;
    }
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* ---- life cycle ------------------------------------------------------- */

static void session_close(struct smtp_session *s)
{
    session_enter(s, S_QUIT);
    bufferevent_disable(s->bev, EV_READ);
    /* A plain session's last reply goes out from flush_cb, which arms the
     * write event only for what the socket does not take: no epoll change
     * just to say 221. */
    if (s->tls)
        bufferevent_enable(s->bev, EV_WRITE);
    clock_gettime(CLOCK_MONOTONIC, &s->close_start);
    close_check(s);
}

static void log_disconnect(struct smtp_session *s)
{
    char buf[512];
    size_t off = 0;
    unsigned total = 0;
    for (int v = 0; v < CMD_COUNT; v++) {
        if (s->ncmd[v] == 0)
            continue;
        total += s->ncmd[v];
        off += (size_t)snprintf(buf + off, sizeof buf - off, " %s=%u",
                                smtp_verb_name((enum smtp_verb)v), s->ncmd[v]);
        if (off >= sizeof buf)
            break;
    }
    if (off >= sizeof buf)
        off = sizeof buf - 1;
    buf[off] = '\0';
    log_info("disconnect from unknown[%s]%s commands=%u", s->ip, buf, total);
}

static void session_unlink(struct smtp_session *s)
{
    if (s->released)
        return;
    s->released = true;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        s->srv->sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    smtp_server_release(s->srv, s->ip);
    log_disconnect(s);
}

static void session_free(struct smtp_session *s)
{
    session_unlink(s);
    if (s->vreq != NULL) {
        verify_cancel(s->vreq);
        s->vreq = NULL;
    }
    if (s->bev != NULL) {
        bufferevent_free(s->bev);
        s->bev = NULL;
    }
    if (s->flush_ev != NULL) {
        event_free(s->flush_ev);
        s->flush_ev = NULL;
    }
    if (s->close_timer != NULL) {
        event_free(s->close_timer);
        s->close_timer = NULL;
    }
    if (s->commit_pending) {
        s->dead = true;          /* stored_cb frees us */
        return;
    }
    s->state = S_INIT;
    txn_reset(s);
    if (s->msg != NULL)
        evbuffer_free(s->msg);
    free(s);
}

void smtp_session_free_all(struct smtp_server *srv)
{
    while (srv->sessions != NULL)
        session_free(srv->sessions);
}

void smtp_session_start(struct smtp_server *srv, evutil_socket_t fd,
                        const struct sockaddr *sa, socklen_t salen,
                        const char *refuse)
{
    (void)salen;
    struct smtp_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        evutil_closesocket(fd);
        return;
    }
    s->srv = srv;
    if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, s->ip, sizeof s->ip);
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, s->ip, sizeof s->ip);
    s->next = srv->sessions;
    if (s->next != NULL)
        s->next->prev = s;
    srv->sessions = s;
    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->close_timer = evtimer_new(srv->base, close_timer_cb, s);
    s->flush_ev = event_new(srv->base, -1, 0, flush_cb, s);
    if (s->bev == NULL || s->close_timer == NULL || s->flush_ev == NULL) {
        if (s->bev == NULL)
            evutil_closesocket(fd);
        session_free(s);
        return;
    }
    session_setup_bev(s);
    log_info("connect from unknown[%s]", s->ip);
    if (refuse != NULL) {
        reply(s, "%s", refuse);
        session_close(s);
        return;
    }
    reply(s, "220 %s ESMTP backupmx", srv->cfg->hostname);
}
