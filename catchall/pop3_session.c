/* POP3 server session (RFC 1939, 2449, 2595, 3206, 5034).
 *
 * An explicit state machine: every command goes through one table that
 * names its handler and the states it is valid in, and every state change
 * goes through pop3_enter(). Replies are appended to the connection's
 * output and leave in one write per event-loop pass, which is what makes
 * PIPELINING cheap. Commands are read only in AUTHORIZATION and
 * TRANSACTION and while the output is below POP3_OUT_HIGH_WATER: a pipelined
 * burst of RETRs is answered in order, each body streamed as the output
 * drains, never stalling the loop and never buffering a whole mailbox.
 *
 * This file: the states, the input loop and the AUTHORIZATION commands;
 * pop3_trans.c has TRANSACTION and UPDATE. */
#include "pop3_session.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "auth.h"
#include "log.h"
#include "mailbox.h"
#include "pop3_parse.h"
#include "pop3_private.h"

#define IDLE_TIMEOUT 600            /* RFC 1939 3: at least 10 minutes */
#define MAX_BAD_COMMANDS 20

static const char *const state_names[P_STATE_COUNT] = {
    "AUTHORIZATION", "AUTH-PLAIN", "LOGIN-DELAY", "STLS",
    "TRANSACTION", "STREAMING", "UPDATE", "QUIT",
};

static const char *const disallowed =
    "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.";

/* ---- replies and states -------------------------------------------------- */

static void vreply(struct pop3_session *s, const char *fmt, va_list ap)
{
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_vprintf(out, fmt, ap);
    evbuffer_add(out, "\r\n", 2);
}

void pop3_reply(struct pop3_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreply(s, fmt, ap);
    va_end(ap);
}

void pop3_bad(struct pop3_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreply(s, fmt, ap);
    va_end(ap);
    if (++s->bad < MAX_BAD_COMMANDS)
        return;
    /* Something that is not a POP3 client (or a confused one) keeps the
     * connection and the maildrop lock; cut it off. */
    pop3_reply(s, "-ERR Too many bad commands.");
    log_info("pop3: too many bad commands: client=%s", mconn_ip(s->c));
    pop3_close(s);
}

void pop3_enter(struct pop3_session *s, enum pop3_state st)
{
    if (s->state == st)
        return;
    log_debug("pop3 %s: %s -> %s", mconn_ip(s->c), state_names[s->state], state_names[st]);
    s->state = st;
}

void pop3_close(struct pop3_session *s)
{
    pop3_enter(s, P_QUIT);
    mconn_close(s->c);
}

/* ---- logging in ------------------------------------------------------------ */

/* A checked login: lock and open the maildrop (RFC 1939 4, RFC 2449
 * 8.1.2). Failing either leaves the session in AUTHORIZATION. */
static void open_maildrop(struct pop3_session *s, const struct bmx_mailbox *mb,
                          const char *method)
{
    const char *ip = mconn_ip(s->c);
    if (!mailbox_lock(mb->name)) {
        log_info("pop3: in use: mailbox=%s, client=%s", mb->name, ip);
        /* fetchmail reads [IN-USE] as "busy, try later", not as bad
         * credentials (which would make it give up on the account). */
        pop3_reply(s, "-ERR [IN-USE] Mailbox is locked by another POP3 session.");
        return;
    }
    s->mbname = strdup(mb->name);
    if (s->mbname == NULL) {
        mailbox_unlock(mb->name);
        log_warn("pop3: cannot open mailbox=%s, client=%s: out of memory", mb->name, ip);
        pop3_reply(s, "-ERR [SYS/TEMP] Out of memory, wait and retry.");
        return;
    }
    char err[256] = "out of memory";
    s->mb = mailbox_open(mb->maildir, err, sizeof err);
    s->count = s->mb != NULL ? mailbox_count(s->mb) : 0;
    s->deleted = calloc(s->count + 1, sizeof *s->deleted);
    if (s->mb == NULL || s->deleted == NULL) {
        log_warn("pop3: cannot open mailbox=%s, client=%s: %s", mb->name, ip, err);
        pop3_release(s);
        /* "wait": fetchmail retries later instead of calling it an
         * authentication failure. */
        pop3_reply(s, "-ERR [SYS/TEMP] Cannot open the mailbox, wait and retry.");
        return;
    }
    log_info("pop3: login: mailbox=%s, client=%s, tls=%s, method=%s", s->mbname, ip,
             mconn_tls_active(s->c) ? "yes" : "no", method);
    pop3_reply(s, "+OK Logged in.");
    pop3_enter(s, P_TRANS);
}

/* The answer to a failed login, after its delay. */
static void login_failed(struct pop3_session *s)
{
    if (s->held == AUTH_BLOCKED) {
        /* Not [AUTH]: the credentials were not even checked, and "wait"
         * makes fetchmail retry later rather than disable the account. */
        pop3_reply(s, "-ERR [SYS/TEMP] Too many failed logins, wait and retry later.");
        pop3_close(s);
        return;
    }
    pop3_reply(s, "-ERR [AUTH] Authentication failed.");
    pop3_enter(s, P_AUTH);
}

static void login_delay_done(void *sess)
{
    struct pop3_session *s = sess;
    mconn_pause(s->c, false);
    login_failed(s);
    mconn_kick(s->c);
}

/* METHOD: "USER" or "PLAIN", for the log. */
static void login(struct pop3_session *s, const char *user, const char *pass,
                  const char *method)
{
    const struct bmx_mailbox *mb = NULL;
    unsigned delay_ms = 0;
    s->have_user = false;
    s->held = auth_login(s->cfg, "pop3", mconn_ip(s->c), user, pass, &mb, &delay_ms);
    if (s->held == AUTH_OK) {
        open_maildrop(s, mb, method);
        return;
    }
    if (delay_ms == 0) {
        login_failed(s);
        return;
    }
    /* The answer (and any pipelined command) waits: guessing costs time. */
    pop3_enter(s, P_DELAY);
    mconn_pause(s->c, true);
    mconn_after(s->c, delay_ms, login_delay_done);
}

/* ---- AUTHORIZATION commands ------------------------------------------------ */

static void cmd_capa(struct pop3_session *s, const char *args)
{
    (void)args;
    bool login_ok = s->state == P_AUTH && mconn_login_allowed(s->c);
    pop3_reply(s, "+OK Capability list follows");
    pop3_reply(s, "TOP");
    pop3_reply(s, "UIDL");
    if (login_ok) {
        pop3_reply(s, "USER");
        pop3_reply(s, "SASL PLAIN");
    }
    pop3_reply(s, "RESP-CODES");
    pop3_reply(s, "AUTH-RESP-CODE");
    pop3_reply(s, "PIPELINING");
    pop3_reply(s, "EXPIRE NEVER");
    pop3_reply(s, "LOGIN-DELAY 0");
    if (s->state == P_AUTH && mconn_starttls_offered(s->c))
        pop3_reply(s, "STLS");
    pop3_reply(s, "IMPLEMENTATION backupmx");
    pop3_reply(s, ".");
}

static void cmd_stls(struct pop3_session *s, const char *args)
{
    if (*args != '\0') {
        pop3_bad(s, "-ERR Syntax: STLS");
        return;
    }
    if (!mconn_starttls_offered(s->c)) {
        pop3_reply(s, mconn_tls_active(s->c) ? "-ERR TLS is already active."
                                              : "-ERR STLS is not available.");
        return;
    }
    pop3_reply(s, "+OK Begin TLS negotiation");
    s->have_user = false;
    if (mconn_starttls(s->c) != 0) {
        pop3_close(s);
        return;
    }
    pop3_enter(s, P_STLS);
}

static void cmd_user(struct pop3_session *s, const char *args)
{
    if (!mconn_login_allowed(s->c)) {
        pop3_reply(s, "%s", disallowed);
        return;
    }
    size_t n = strlen(args);
    if (n == 0 || n >= sizeof s->user) {
        pop3_bad(s, "-ERR Syntax: USER name");
        return;
    }
    memcpy(s->user, args, n + 1);
    s->have_user = true;
    pop3_reply(s, "+OK");
}

static void cmd_pass(struct pop3_session *s, const char *args)
{
    if (!mconn_login_allowed(s->c)) {
        pop3_reply(s, "%s", disallowed);
        return;
    }
    if (!s->have_user) {
        pop3_bad(s, "-ERR No username given.");
        return;
    }
    login(s, s->user, args, "USER");
}

/* The SASL PLAIN response (RFC 5034 4, RFC 4616), base64. */
static void sasl_plain(struct pop3_session *s, const char *resp)
{
    pop3_enter(s, P_AUTH);
    if (strcmp(resp, "*") == 0) {
        pop3_reply(s, "-ERR Authentication cancelled.");
        return;
    }
    size_t len = strlen(resp);
    char buf[POP3_LINE_MAX];
    long n = len <= sizeof buf ? pop3_b64decode(resp, len, (unsigned char *)buf) : -1;
    const char *user, *pass;
    if (n < 0 || !auth_plain_split(buf, (size_t)n, &user, &pass)) {
        pop3_bad(s, "-ERR Invalid AUTH PLAIN response.");
        return;
    }
    login(s, user, pass, "PLAIN");
}

static void cmd_auth(struct pop3_session *s, const char *args)
{
    bool login_ok = mconn_login_allowed(s->c);
    if (*args == '\0') {
        /* The mechanism list of the pre-RFC 5034 drafts, still probed. */
        pop3_reply(s, "+OK");
        if (login_ok)
            pop3_reply(s, "PLAIN");
        pop3_reply(s, ".");
        return;
    }
    size_t n = strcspn(args, " ");
    if (n != 5 || strncasecmp(args, "PLAIN", 5) != 0) {
        pop3_reply(s, "-ERR Unsupported authentication mechanism.");
        return;
    }
    if (!login_ok) {
        pop3_reply(s, "%s", disallowed);
        return;
    }
    if (args[n] == '\0') {
        pop3_reply(s, "+ ");
        pop3_enter(s, P_SASL);
        return;
    }
    sasl_plain(s, args + n + 1);
}

static void cmd_noop(struct pop3_session *s, const char *args)
{
    (void)args;
    pop3_reply(s, "+OK");
}

static void cmd_quit(struct pop3_session *s, const char *args)
{
    (void)args;
    if (s->state == P_TRANS) {
        pop3_update(s);
        return;
    }
    pop3_reply(s, "+OK Logging out.");
    pop3_close(s);
}

static void cmd_unknown(struct pop3_session *s, const char *args)
{
    (void)args;
    /* LAST (gone since RFC 1939), UTF8 (RFC 6856), APOP and the rest */
    pop3_bad(s, "-ERR Unknown command.");
}

/* ---- dispatch ---------------------------------------------------------------- */

#define IN_AUTH (1u << P_AUTH)
#define IN_TRANS (1u << P_TRANS)

typedef void (*cmd_fn)(struct pop3_session *, const char *);

static const struct {
    cmd_fn fn;
    unsigned states;            /* bit set of enum pop3_state */
} cmd_table[P3_COUNT] = {
    [P3_UNKNOWN] = { cmd_unknown, IN_AUTH | IN_TRANS },
    [P3_CAPA] = { cmd_capa, IN_AUTH | IN_TRANS },
    [P3_STLS] = { cmd_stls, IN_AUTH },
    [P3_USER] = { cmd_user, IN_AUTH },
    [P3_PASS] = { cmd_pass, IN_AUTH },
    [P3_AUTH] = { cmd_auth, IN_AUTH },
    [P3_STAT] = { pop3_cmd_stat, IN_TRANS },
    [P3_LIST] = { pop3_cmd_list, IN_TRANS },
    [P3_UIDL] = { pop3_cmd_uidl, IN_TRANS },
    [P3_RETR] = { pop3_cmd_retr, IN_TRANS },
    [P3_TOP] = { pop3_cmd_top, IN_TRANS },
    [P3_DELE] = { pop3_cmd_dele, IN_TRANS },
    [P3_NOOP] = { cmd_noop, IN_AUTH | IN_TRANS },
    [P3_RSET] = { pop3_cmd_rset, IN_TRANS },
    [P3_QUIT] = { cmd_quit, IN_AUTH | IN_TRANS },
};

static void dispatch(struct pop3_session *s, const char *line)
{
    const char *args;
    enum pop3_verb v = pop3_parse_verb(line, &args);
    if (cmd_table[v].states & (1u << s->state)) {
        cmd_table[v].fn(s, args);
        return;
    }
    pop3_bad(s, s->state == P_AUTH ? "-ERR Not logged in." : "-ERR Already logged in.");
}

/* ---- input ---------------------------------------------------------------------- */

enum line_status { LINE_NONE, LINE_DROPPED, LINE_OK };

/* Takes one command line out of IN into LINE (CRLF removed). An over-long
 * line is answered once and dropped, up to its end; so is one with a NUL
 * or a CR inside. */
static enum line_status read_line(struct pop3_session *s, struct evbuffer *in, char *line)
{
    size_t eol_len;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    if (p.pos < 0) {
        size_t n = evbuffer_get_length(in);
        if (n < POP3_LINE_MAX)
            return LINE_NONE;
        if (!s->discard_line)
            pop3_bad(s, "-ERR Line too long.");
        s->discard_line = true;
        evbuffer_drain(in, n);
        return LINE_DROPPED;
    }
    size_t len = (size_t)p.pos + 1;
    if (s->discard_line || len > POP3_LINE_MAX) {
        if (!s->discard_line)
            pop3_bad(s, "-ERR Line too long.");
        s->discard_line = false;
        evbuffer_drain(in, len);
        return LINE_DROPPED;
    }
    evbuffer_remove(in, line, len);
    len--;                                  /* the LF; a CR before it is optional */
    if (len > 0 && line[len - 1] == '\r')
        len--;
    line[len] = '\0';
    if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL) {
        pop3_bad(s, "-ERR Invalid characters in command.");
        return LINE_DROPPED;
    }
    return LINE_OK;
}

static void handle_line(struct pop3_session *s, const char *line)
{
    if (s->state == P_SASL) {
        sasl_plain(s, line);
        return;
    }
    dispatch(s, line);
}

/* May commands be read now? */
static bool reading(struct pop3_session *s)
{
    if (s->state == P_STREAM && !pop3_stream(s))
        return false;
    if (s->state != P_AUTH && s->state != P_TRANS && s->state != P_SASL)
        return false;
    return mconn_pending(s->c) < POP3_OUT_HIGH_WATER;
}

static void pop3_input(void *sess, struct evbuffer *in)
{
    struct pop3_session *s = sess;
    if (s->state == P_STLS) {
        if (!mconn_tls_active(s->c)) {
            /* RFC 2595 4: nothing sent in plaintext after STLS counts. */
            evbuffer_drain(in, evbuffer_get_length(in));
            return;
        }
        pop3_enter(s, P_AUTH);
    }
    char line[POP3_LINE_MAX + 1];
    while (reading(s)) {
        enum line_status ls = read_line(s, in, line);
        if (ls == LINE_NONE)
            return;
        if (ls == LINE_OK)
            handle_line(s, line);
        else if (s->state == P_SASL)
            pop3_enter(s, P_AUTH);      /* the exchange ends with that -ERR */
    }
}

static void pop3_drained(void *sess)
{
    struct pop3_session *s = sess;
    if (s->state == P_STREAM)
        pop3_stream(s);
}

/* ---- life cycle ------------------------------------------------------------------ */

static void *pop3_start(struct mconn *c)
{
    struct pop3_session *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->c = c;
    s->cfg = mconn_config(c);
    s->state = P_AUTH;
    s->xfer.fd = -1;
    mconn_set_timeout(c, IDLE_TIMEOUT);
    /* No APOP <timestamp>: fdm and mpop would try APOP, which we lack. */
    pop3_reply(s, "+OK %s POP3 ready", s->cfg->hostname);
    return s;
}

static void pop3_free(void *sess)
{
    struct pop3_session *s = sess;
    /* A session that did not reach UPDATE deletes nothing (RFC 1939 6). */
    if (s->mb != NULL)
        pop3_lost(s);
    pop3_release(s);
    free(s);
}

const struct mproto pop3_proto = {
    .name = "pop3",
    .start = pop3_start,
    .input = pop3_input,
    .drained = pop3_drained,
    .free = pop3_free,
};
