/* IMAP4rev1 server session (RFC 3501, 2177 IDLE, 4315 UIDPLUS) for the one
 * mailbox INBOX of a catch-all Maildir.
 *
 * An explicit state machine: every command goes through one table that
 * says in which states it is valid, and the handler parses its own
 * arguments with imap_parse.c. Input is assembled into whole commands
 * first (lines plus synchronizing literals, each answered with "+"), so a
 * handler never sees half a command. Besides commands the session may be
 * waiting for a SASL response, the end of a login delay, "DONE" after
 * IDLE, or output to drain under a large FETCH (enum imap_wait); input is
 * left in the buffer until then, which keeps pipelined commands in order.
 *
 * Unsolicited EXISTS/RECENT go out only at SELECT, NOOP, CHECK and IDLE
 * (RFC 3501 7.3.1/5.2), EXPUNGE only in answer to EXPUNGE, UID EXPUNGE:
 * never in the middle of FETCH, STORE or SEARCH (7.4.1). */
#include "imap_session.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <openssl/evp.h>

#include "auth.h"
#include "imap_private.h"
#include "log.h"

#define PRELOGIN_TIMEOUT 60          /* seconds, before login */
#define SESSION_TIMEOUT (31 * 60)    /* RFC 3501 5.4: at least 30 minutes */
#define MAX_BAD 20                   /* BAD replies before the session is closed */
#define SASL_MAX 4096                /* base64 of an AUTHENTICATE PLAIN response */

static const char PERMANENT_FLAGS[] = "(\\Answered \\Flagged \\Deleted \\Seen \\Draft)";

static void session_close(struct imap_session *s);

/* ---- replies ---------------------------------------------------------- */

static void vline(struct imap_session *s, const char *prefix, const char *fmt, va_list ap)
{
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_printf(out, "%s ", prefix);
    evbuffer_add_vprintf(out, fmt, ap);
    evbuffer_add(out, "\r\n", 2);
}

void imap_untagged(struct imap_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(s, "*", fmt, ap);
    va_end(ap);
}

void imap_tagged(struct imap_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(s, s->tag, fmt, ap);
    va_end(ap);
}

void imap_bad(struct imap_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_printf(out, "%s BAD ", s->tag);
    evbuffer_add_vprintf(out, fmt, ap);
    evbuffer_add(out, "\r\n", 2);
    va_end(ap);
    if (++s->bad < MAX_BAD)
        return;
    log_info("imap: too many errors: client=%s", mconn_ip(s->c));
    imap_untagged(s, "BYE Too many invalid commands");
    session_close(s);
}

static void syntax_error(struct imap_session *s, const struct imap_parser *ps)
{
    imap_bad(s, "%s", ps->error != NULL ? ps->error : "Syntax error");
}

void imap_put_flags(struct evbuffer *out, const struct mbox_msg *m)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        {MF_ANSWERED, "\\Answered"}, {MF_FLAGGED, "\\Flagged"}, {MF_DELETED, "\\Deleted"},
        {MF_SEEN, "\\Seen"}, {MF_DRAFT, "\\Draft"},
    };
    const char *sep = "";
    evbuffer_add(out, "(", 1);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (m->flags & names[i].bit) {
            evbuffer_add_printf(out, "%s%s", sep, names[i].name);
            sep = " ";
        }
    if (m->recent)
        evbuffer_add_printf(out, "%s\\Recent", sep);
    evbuffer_add(out, ")", 1);
}

/* Only what is implemented: clients act on every word here. */
static void put_capabilities(struct imap_session *s, struct evbuffer *out)
{
    evbuffer_add_printf(out, "IMAP4rev1");
    if (s->state == I_NOTAUTH) {
        if (mconn_starttls_offered(s->c))
            evbuffer_add_printf(out, " STARTTLS");
        if (mconn_login_allowed(s->c))
            evbuffer_add_printf(out, " AUTH=PLAIN");
        else
            evbuffer_add_printf(out, " LOGINDISABLED");
    }
    evbuffer_add_printf(out, " IDLE UIDPLUS");
}

/* ---- state ------------------------------------------------------------ */

static const char *mailbox_name(const struct imap_session *s)
{
    return s->mbox != NULL ? s->mbox->name : "-";
}

static void session_close(struct imap_session *s)
{
    s->state = I_LOGOUT;
    mconn_close(s->c);
}

/* Leaves the selected state without expunging. */
static void unselect(struct imap_session *s)
{
    if (s->watch != NULL) {
        mailbox_watch_remove(s->watch);
        s->watch = NULL;
    }
    if (s->mb != NULL) {
        mailbox_close(s->mb);
        s->mb = NULL;
    }
    if (s->state == I_SELECTED)
        s->state = I_AUTH;
}

static size_t count_unseen(struct mailbox *mb)
{
    size_t n = 0, count = mailbox_count(mb);
    for (size_t i = 0; i < count; i++)
        if (!(mailbox_msg(mb, i)->flags & MF_SEEN))
            n++;
    return n;
}

static size_t count_recent(struct mailbox *mb)
{
    size_t n = 0, count = mailbox_count(mb);
    for (size_t i = 0; i < count; i++)
        if (mailbox_msg(mb, i)->recent)
            n++;
    return n;
}

/* New deliveries since the client was last told: "* n EXISTS" and
 * "* n RECENT". Only called where RFC 3501 allows it. */
static void report_new_mail(struct imap_session *s)
{
    size_t added = 0;
    if (mailbox_rescan(s->mb, &added) != 0)
        log_warn("imap: cannot rescan mailbox %s: client=%s", mailbox_name(s), mconn_ip(s->c));
    size_t n = mailbox_count(s->mb);
    if (n == s->exists)
        return;
    s->exists = n;
    imap_untagged(s, "%zu EXISTS", n);
    imap_untagged(s, "%zu RECENT", count_recent(s->mb));
}

bool imap_resolve_set(struct imap_session *s, const struct imap_seqset *set, bool uid,
                      size_t **idx, size_t *n)
{
    size_t count = mailbox_count(s->mb);
    *idx = NULL;
    *n = 0;
    /* RFC 3501 9: a sequence number beyond the mailbox is invalid; a UID
     * that does not exist is simply not there. */
    if (!uid && imap_seqset_max(set) > count)
        return false;
    if (count == 0)
        return true;
    uint32_t star = uid ? mailbox_msg(s->mb, count - 1)->uid : (uint32_t)count;
    size_t *v = malloc(count * sizeof *v);
    if (v == NULL)
        return true;
    for (size_t i = 0; i < count; i++) {
        uint32_t key = uid ? mailbox_msg(s->mb, i)->uid : (uint32_t)(i + 1);
        if (imap_seqset_contains(set, key, star))
            v[(*n)++] = i;
    }
    if (*n == 0) {
        free(v);
        v = NULL;
    }
    *idx = v;
    return true;
}

/* ---- any state (RFC 3501 6.1) ------------------------------------------ */

static void cmd_capability(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_printf(out, "* CAPABILITY ");
    put_capabilities(s, out);
    evbuffer_add(out, "\r\n", 2);
    imap_tagged(s, "OK CAPABILITY completed");
}

static void cmd_noop(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (s->state == I_SELECTED)
        report_new_mail(s);
    imap_tagged(s, "OK NOOP completed");
}

static void cmd_logout(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    imap_untagged(s, "BYE %s IMAP4rev1 server logging out", s->cfg->hostname);
    imap_tagged(s, "OK LOGOUT completed");
    log_info("imap: logout: mailbox=%s, client=%s", mailbox_name(s), mconn_ip(s->c));
    session_close(s);
}

/* ---- not authenticated (6.2) ------------------------------------------ */

static void cmd_starttls(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (!mconn_starttls_offered(s->c)) {
        imap_bad(s, mconn_tls_active(s->c) ? "TLS is already active" : "STARTTLS is not available");
        return;
    }
    imap_tagged(s, "OK Begin TLS negotiation now");
    s->wait = W_STARTTLS;
    if (mconn_starttls(s->c) != 0)
        session_close(s);
}

static void login_ok(struct imap_session *s, const struct bmx_mailbox *mb)
{
    s->mbox = mb;
    s->state = I_AUTH;
    mconn_set_timeout(s->c, SESSION_TIMEOUT);
    log_info("imap: login: mailbox=%s, client=%s, tls=%s", mb->name, mconn_ip(s->c),
             mconn_tls_active(s->c) ? "yes" : "no");
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_printf(out, "%s OK [CAPABILITY ", s->tag);
    put_capabilities(s, out);
    evbuffer_add_printf(out, "] Logged in\r\n");
}

static void login_failed(struct imap_session *s)
{
    imap_tagged(s, "NO [AUTHENTICATIONFAILED] Authentication failed.");
    if (s->held != AUTH_BLOCKED)
        return;
    imap_untagged(s, "BYE Too many failed logins");
    session_close(s);
}

/* The answer to a failed login, held back by the delay auth_login() gave. */
static void login_delay_done(void *sess)
{
    struct imap_session *s = sess;
    s->wait = W_COMMAND;
    mconn_pause(s->c, false);
    login_failed(s);
    mconn_kick(s->c);
}

static void login_attempt(struct imap_session *s, const char *user, const char *pass)
{
    const struct bmx_mailbox *mb;
    unsigned delay;
    enum auth_result r = auth_login(s->cfg, "imap", mconn_ip(s->c), user, pass, &mb, &delay);
    if (r == AUTH_OK) {
        login_ok(s, mb);
        return;
    }
    s->held = r;
    if (delay == 0) {
        login_failed(s);
        return;
    }
    s->wait = W_DELAY;
    mconn_pause(s->c, true);
    mconn_after(s->c, delay, login_delay_done);
}

static bool refuse_plaintext(struct imap_session *s)
{
    if (mconn_login_allowed(s->c))
        return false;
    imap_tagged(s, "NO [PRIVACYREQUIRED] Plaintext authentication is disallowed without TLS");
    return true;
}

static void cmd_login(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    struct imap_str user, pass;
    if (!imap_sp(ps) || !imap_astring(ps, &user) || !imap_sp(ps) || !imap_astring(ps, &pass)
        || !imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (refuse_plaintext(s))
        return;
    login_attempt(s, user.s, pass.s);
    /* The arena is freed, not cleared: do not leave the password there. */
    explicit_bzero((char *)pass.s, pass.len);
}

static void cmd_authenticate(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    const char *mech;
    /* No SASL-IR (not advertised): the response comes after "+ ". */
    if (!imap_sp(ps) || !imap_atom_upper(ps, &mech) || !imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (strcmp(mech, "PLAIN") != 0) {
        imap_tagged(s, "NO [CANNOT] Unsupported authentication mechanism");
        return;
    }
    if (refuse_plaintext(s))
        return;
    mconn_printf(s->c, "+ \r\n");
    s->wait = W_SASL;
}

/* The AUTHENTICATE PLAIN response line (RFC 3501 6.2.2, RFC 4616). */
static void sasl_response(struct imap_session *s, const char *line, size_t len)
{
    s->wait = W_COMMAND;
    if (len == 1 && line[0] == '*') {
        imap_bad(s, "AUTHENTICATE cancelled");
        return;
    }
    unsigned char buf[SASL_MAX / 4 * 3 + 1];
    if (len == 0 || len > SASL_MAX || len % 4 != 0) {
        imap_bad(s, "Invalid base64 in AUTHENTICATE response");
        return;
    }
    int n = EVP_DecodeBlock(buf, (const unsigned char *)line, (int)len);
    if (n < 0) {
        imap_bad(s, "Invalid base64 in AUTHENTICATE response");
        return;
    }
    /* EVP_DecodeBlock counts the padding as decoded zero bytes. */
    for (size_t i = len; i > 0 && line[i - 1] == '=' && n > 0; i--)
        n--;
    const char *user, *pass;
    if (!auth_plain_split((char *)buf, (size_t)n, &user, &pass)) {
        explicit_bzero(buf, sizeof buf);
        imap_bad(s, "Invalid SASL PLAIN response");
        return;
    }
    login_attempt(s, user, pass);
    explicit_bzero(buf, sizeof buf);
}

/* ---- authenticated (6.3) ---------------------------------------------- */

static bool is_inbox(const struct imap_str *name)
{
    return name->len == 5 && strcasecmp(name->s, "INBOX") == 0;
}

static void select_mailbox(struct imap_session *s, bool readonly)
{
    char err[256];
    s->mb = mailbox_open(s->mbox->maildir, err, sizeof err);
    if (s->mb == NULL) {
        log_warn("imap: cannot open mailbox %s: %s", mailbox_name(s), err);
        imap_tagged(s, "NO [SERVERBUG] Cannot open the mailbox");
        return;
    }
    s->state = I_SELECTED;
    s->readonly = readonly;
    s->exists = mailbox_count(s->mb);
    size_t count = s->exists;
    imap_untagged(s, "FLAGS %s", PERMANENT_FLAGS);
    imap_untagged(s, "%zu EXISTS", count);
    imap_untagged(s, "%zu RECENT", count_recent(s->mb));
    for (size_t i = 0; i < count; i++)
        if (!(mailbox_msg(s->mb, i)->flags & MF_SEEN)) {
            imap_untagged(s, "OK [UNSEEN %zu] First unseen", i + 1);
            break;
        }
    imap_untagged(s, "OK [UIDVALIDITY %u] UIDs valid", mailbox_uidvalidity(s->mb));
    imap_untagged(s, "OK [UIDNEXT %u] Predicted next UID", mailbox_uidnext(s->mb));
    imap_untagged(s, "OK [PERMANENTFLAGS %s] Limited", readonly ? "()" : PERMANENT_FLAGS);
    /* Never READ-ONLY on SELECT: fetchmail takes it for "mailbox busy". */
    if (readonly)
        imap_tagged(s, "OK [READ-ONLY] EXAMINE completed");
    else
        imap_tagged(s, "OK [READ-WRITE] SELECT completed");
}

static void select_or_examine(struct imap_session *s, struct imap_parser *ps, bool readonly)
{
    struct imap_str name;
    if (!imap_sp(ps) || !imap_astring(ps, &name) || !imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    /* RFC 3501 6.3.1: the current mailbox is left (without expunging)
     * even if the new one cannot be selected. */
    unselect(s);
    if (!is_inbox(&name)) {
        imap_tagged(s, "NO [NONEXISTENT] Only INBOX exists here");
        return;
    }
    select_mailbox(s, readonly);
}

static void cmd_select(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    select_or_examine(s, ps, false);
}

static void cmd_examine(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    select_or_examine(s, ps, true);
}

/* Whether "INBOX" matches the LIST pattern PAT ('*' anything, '%'
 * anything but the hierarchy delimiter, which INBOX does not contain).
 * Dynamic programming over the five letters: no backtracking blow-up on
 * patterns full of wildcards. */
static bool inbox_matches(const char *pat)
{
    static const char inbox[] = "INBOX";
    enum { N = sizeof inbox - 1 };
    bool m[N + 1] = {true};          /* m[j]: pattern so far matches inbox[0..j) */
    for (; *pat; pat++) {
        bool next[N + 1] = {false};
        if (*pat == '*' || *pat == '%') {
            bool any = false;
            for (int j = 0; j <= N; j++)
                next[j] = any = any || m[j];
        } else {
            for (int j = 1; j <= N; j++)
                next[j] = m[j - 1] && toupper((unsigned char)*pat) == inbox[j - 1];
        }
        memcpy(m, next, sizeof m);
    }
    return m[N];
}

static void list_or_lsub(struct imap_session *s, struct imap_parser *ps, bool lsub)
{
    struct imap_str ref, pat;
    if (!imap_sp(ps) || !imap_astring(ps, &ref) || !imap_sp(ps)
        || !imap_list_mailbox(ps, &pat) || !imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    const char *what = lsub ? "LSUB" : "LIST";
    if (!lsub && pat.len == 0) {
        /* RFC 3501 6.3.8: the hierarchy delimiter and root name. */
        imap_untagged(s, "LIST (\\Noselect) \"/\" \"\"");
    } else if (ref.len + pat.len < 256) {
        char full[256];
        snprintf(full, sizeof full, "%s%s", ref.s, pat.s);
        if (inbox_matches(full))
            imap_untagged(s, "%s (%s) \"/\" INBOX", what, lsub ? "" : "\\HasNoChildren");
    }
    imap_tagged(s, "OK %s completed", what);
}

static void cmd_list(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    list_or_lsub(s, ps, false);
}

static void cmd_lsub(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    list_or_lsub(s, ps, true);
}

/* SUBSCRIBE / UNSUBSCRIBE: INBOX is always subscribed. */
static void cmd_subscribe(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    struct imap_str name;
    if (!imap_sp(ps) || !imap_astring(ps, &name) || !imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (is_inbox(&name))
        imap_tagged(s, "OK Completed");
    else
        imap_tagged(s, "NO [NONEXISTENT] Only INBOX exists here");
}

/* CREATE, DELETE, RENAME, APPEND, COPY: there is one mailbox and mail only
 * comes in over SMTP. Arguments are not checked. */
static void cmd_cannot(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)ps;
    (void)uid;
    imap_tagged(s, "NO [CANNOT] Only INBOX exists here, and only SMTP delivers to it");
}

enum status_item { ST_MESSAGES, ST_RECENT, ST_UIDNEXT, ST_UIDVALIDITY, ST_UNSEEN, ST_COUNT };

static const char *const status_names[ST_COUNT] = {
    "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
};

#define STATUS_ITEMS_MAX 16

/* "(" item *(SP item) ")", in the order asked. */
static bool status_items(struct imap_parser *ps, enum status_item *items, size_t *n)
{
    *n = 0;
    if (!imap_expect(ps, '('))
        return false;
    do {
        const char *name;
        if (*n == STATUS_ITEMS_MAX || !imap_atom_upper(ps, &name))
            return false;
        size_t k = 0;
        while (k < ST_COUNT && strcmp(name, status_names[k]) != 0)
            k++;
        if (k == ST_COUNT) {
            ps->error = "Unknown STATUS item";
            return false;
        }
        items[(*n)++] = (enum status_item)k;
    } while (imap_take(ps, ' '));
    return imap_expect(ps, ')');
}

static unsigned long long status_value(struct mailbox *mb, enum status_item item)
{
    switch (item) {
    case ST_MESSAGES: return mailbox_count(mb);
    case ST_RECENT: return count_recent(mb);
    case ST_UIDNEXT: return mailbox_uidnext(mb);
    case ST_UIDVALIDITY: return mailbox_uidvalidity(mb);
    case ST_UNSEEN: return count_unseen(mb);
    case ST_COUNT: break;
    }
    return 0;
}

static void cmd_status(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    struct imap_str name;
    enum status_item items[STATUS_ITEMS_MAX];
    size_t n;
    if (!imap_sp(ps) || !imap_astring(ps, &name) || !imap_sp(ps)
        || !status_items(ps, items, &n) || !imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (!is_inbox(&name)) {
        imap_tagged(s, "NO [NONEXISTENT] Only INBOX exists here");
        return;
    }
    /* The selected view if there is one (no rescan: that would report new
     * mail outside NOOP/CHECK/IDLE), else a short-lived one. */
    char err[256];
    struct mailbox *mb = s->mb != NULL ? s->mb : mailbox_open(s->mbox->maildir, err, sizeof err);
    if (mb == NULL) {
        log_warn("imap: cannot open mailbox %s: %s", mailbox_name(s), err);
        imap_tagged(s, "NO [SERVERBUG] Cannot open the mailbox");
        return;
    }
    struct evbuffer *out = mconn_output(s->c);
    evbuffer_add_printf(out, "* STATUS INBOX (");
    for (size_t i = 0; i < n; i++)
        evbuffer_add_printf(out, "%s%s %llu", i ? " " : "", status_names[items[i]],
                            status_value(mb, items[i]));
    evbuffer_add_printf(out, ")\r\n");
    if (mb != s->mb)
        mailbox_close(mb);
    imap_tagged(s, "OK STATUS completed");
}

/* ---- selected (6.4) --------------------------------------------------- */

static void cmd_check(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    report_new_mail(s);
    imap_tagged(s, "OK CHECK completed");
}

/* Removes the \Deleted messages (those in SET, if given, by UID),
 * highest first so that each "* n EXPUNGE" is right as sent. Returns the
 * number that could not be removed. */
static size_t expunge(struct imap_session *s, const struct imap_seqset *set, bool report)
{
    size_t count = mailbox_count(s->mb), failed = 0;
    uint32_t star = count > 0 ? mailbox_msg(s->mb, count - 1)->uid : 0;
    for (size_t i = count; i-- > 0;) {
        const struct mbox_msg *m = mailbox_msg(s->mb, i);
        if (!(m->flags & MF_DELETED))
            continue;
        if (set != NULL && !imap_seqset_contains(set, m->uid, star))
            continue;
        uint32_t uid = m->uid;
        if (mailbox_expunge(s->mb, i) != 0) {
            log_warn("imap: cannot expunge: mailbox=%s, uid=%u, client=%s", mailbox_name(s),
                     uid, mconn_ip(s->c));
            failed++;
            continue;
        }
        log_info("imap: expunge: mailbox=%s, uid=%u, client=%s", mailbox_name(s), uid,
                 mconn_ip(s->c));
        s->exists--;
        if (report)
            imap_untagged(s, "%zu EXPUNGE", i + 1);
    }
    return failed;
}

static bool refuse_readonly(struct imap_session *s)
{
    if (!s->readonly)
        return false;
    imap_tagged(s, "NO [READ-ONLY] The mailbox was opened with EXAMINE");
    return true;
}

static void cmd_expunge(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    struct imap_seqset set;
    if (uid && (!imap_sp(ps) || !imap_seqset(ps, &set))) {
        syntax_error(s, ps);
        return;
    }
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (refuse_readonly(s))
        return;
    if (expunge(s, uid ? &set : NULL, true) > 0)
        imap_tagged(s, "NO [SERVERBUG] Some messages could not be expunged");
    else
        imap_tagged(s, "OK EXPUNGE completed");
}

static void cmd_close(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    /* RFC 3501 6.4.2: an expunge without untagged EXPUNGE responses; fdm
     * deletes mail this way. */
    if (!s->readonly)
        expunge(s, NULL, false);
    unselect(s);
    imap_tagged(s, "OK CLOSE completed");
}

enum store_mode { STORE_SET, STORE_ADD, STORE_REMOVE };

static bool store_op(const char *op, enum store_mode *mode, bool *silent)
{
    *mode = op[0] == '+' ? STORE_ADD : op[0] == '-' ? STORE_REMOVE : STORE_SET;
    if (*mode != STORE_SET)
        op++;
    if (strcmp(op, "FLAGS") == 0)
        *silent = false;
    else if (strcmp(op, "FLAGS.SILENT") == 0)
        *silent = true;
    else
        return false;
    return true;
}

static void cmd_store(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    struct imap_seqset set;
    const char *op;
    unsigned flags, keywords;
    enum store_mode mode;
    bool silent;
    if (!imap_sp(ps) || !imap_seqset(ps, &set) || !imap_sp(ps) || !imap_atom_upper(ps, &op)
        || !imap_sp(ps) || !imap_flag_list(ps, &flags, &keywords) || !imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    if (!store_op(op, &mode, &silent)) {
        imap_bad(s, "Invalid STORE operation");
        return;
    }
    if (refuse_readonly(s))
        return;
    size_t *idx, n, failed = 0;
    if (!imap_resolve_set(s, &set, uid, &idx, &n)) {
        imap_bad(s, "Invalid message sequence number");
        return;
    }
    /* Keywords cannot be stored (PERMANENTFLAGS has no \*): ignored. */
    for (size_t k = 0; k < n; k++) {
        const struct mbox_msg *m = mailbox_msg(s->mb, idx[k]);
        unsigned f = mode == STORE_SET ? (m->flags & MF_PASSED) | flags
                   : mode == STORE_ADD ? m->flags | flags : m->flags & ~flags;
        if (f != m->flags && mailbox_set_flags(s->mb, idx[k], f) != 0) {
            log_warn("imap: cannot set flags: mailbox=%s, uid=%u, client=%s", mailbox_name(s),
                     m->uid, mconn_ip(s->c));
            failed++;
        }
        if (silent)
            continue;
        m = mailbox_msg(s->mb, idx[k]);
        struct evbuffer *out = mconn_output(s->c);
        evbuffer_add_printf(out, "* %zu FETCH (", idx[k] + 1);
        if (uid)
            evbuffer_add_printf(out, "UID %u ", m->uid);
        evbuffer_add_printf(out, "FLAGS ");
        imap_put_flags(out, m);
        evbuffer_add_printf(out, ")\r\n");
    }
    free(idx);
    if (failed > 0)
        imap_tagged(s, "NO [SERVERBUG] Some flags could not be stored");
    else
        imap_tagged(s, "OK STORE completed");
}

static void cmd_fetch(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    imap_cmd_fetch(s, ps, uid);
}

static void cmd_search(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    imap_cmd_search(s, ps, uid);
}

/* ---- IDLE (RFC 2177) -------------------------------------------------- */

static void idle_wakeup(void *arg)
{
    struct imap_session *s = arg;
    if (s->wait == W_IDLE && s->mb != NULL)
        report_new_mail(s);
}

static void cmd_idle(struct imap_session *s, struct imap_parser *ps, bool uid)
{
    (void)uid;
    if (!imap_eol(ps)) {
        syntax_error(s, ps);
        return;
    }
    mconn_printf(s->c, "+ idling\r\n");
    s->wait = W_IDLE;
    if (s->mb == NULL)
        return;
    /* Mail may have come since the client last looked. */
    report_new_mail(s);
    s->watch = mailbox_watch_add(s->mbox->maildir, idle_wakeup, s);
    if (s->watch == NULL)
        log_warn("imap: cannot watch mailbox %s: client=%s", mailbox_name(s), mconn_ip(s->c));
}

static void idle_end(struct imap_session *s)
{
    s->wait = W_COMMAND;
    if (s->watch != NULL) {
        mailbox_watch_remove(s->watch);
        s->watch = NULL;
    }
}

static void idle_line(struct imap_session *s, const char *line, size_t len)
{
    idle_end(s);
    if (len == 4 && strncasecmp(line, "DONE", 4) == 0)
        imap_tagged(s, "OK IDLE terminated");
    else
        imap_bad(s, "Expected DONE");
}

/* ---- the command table ------------------------------------------------ */

typedef void (*imap_cmd_fn)(struct imap_session *, struct imap_parser *, bool uid);

#define NOTAUTH (1u << I_NOTAUTH)
#define AUTH (1u << I_AUTH)
#define SELECTED (1u << I_SELECTED)
#define ANY (NOTAUTH | AUTH | SELECTED)

static const struct imap_command {
    const char *name;
    unsigned states;
    bool uid;                        /* also valid as "UID name" */
    imap_cmd_fn fn;
} commands[] = {
    {"CAPABILITY", ANY, false, cmd_capability},
    {"NOOP", ANY, false, cmd_noop},
    {"LOGOUT", ANY, false, cmd_logout},
    {"STARTTLS", NOTAUTH, false, cmd_starttls},
    {"LOGIN", NOTAUTH, false, cmd_login},
    {"AUTHENTICATE", NOTAUTH, false, cmd_authenticate},
    {"SELECT", AUTH | SELECTED, false, cmd_select},
    {"EXAMINE", AUTH | SELECTED, false, cmd_examine},
    {"LIST", AUTH | SELECTED, false, cmd_list},
    {"LSUB", AUTH | SELECTED, false, cmd_lsub},
    {"STATUS", AUTH | SELECTED, false, cmd_status},
    {"SUBSCRIBE", AUTH | SELECTED, false, cmd_subscribe},
    {"UNSUBSCRIBE", AUTH | SELECTED, false, cmd_subscribe},
    {"CREATE", AUTH | SELECTED, false, cmd_cannot},
    {"DELETE", AUTH | SELECTED, false, cmd_cannot},
    {"RENAME", AUTH | SELECTED, false, cmd_cannot},
    {"APPEND", AUTH | SELECTED, false, cmd_cannot},
    {"IDLE", AUTH | SELECTED, false, cmd_idle},
    {"CHECK", SELECTED, false, cmd_check},
    {"CLOSE", SELECTED, false, cmd_close},
    {"EXPUNGE", SELECTED, true, cmd_expunge},
    {"SEARCH", SELECTED, true, cmd_search},
    {"FETCH", SELECTED, true, cmd_fetch},
    {"STORE", SELECTED, true, cmd_store},
    {"COPY", SELECTED, true, cmd_cannot},
};

static const struct imap_command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void run_command(struct imap_session *s, struct imap_parser *ps)
{
    const char *tag, *name;
    if (!imap_tag(ps, &tag)) {
        strcpy(s->tag, "*");
        imap_bad(s, "Invalid tag");
        return;
    }
    snprintf(s->tag, sizeof s->tag, "%s", tag);
    if (!imap_sp(ps) || !imap_atom_upper(ps, &name)) {
        imap_bad(s, "Missing command");
        return;
    }
    bool uid = strcmp(name, "UID") == 0;
    if (uid && (!imap_sp(ps) || !imap_atom_upper(ps, &name))) {
        imap_bad(s, "Missing command after UID");
        return;
    }
    const struct imap_command *cmd = find_command(name);
    if (cmd == NULL || (uid && !cmd->uid)) {
        imap_bad(s, "Unknown command");
        return;
    }
    if (!(cmd->states & (1u << s->state))) {
        imap_bad(s, s->state == I_NOTAUTH ? "Log in first"
                    : s->state == I_AUTH && (cmd->states & SELECTED) ? "No mailbox selected"
                    : "Command not valid in this state");
        return;
    }
    log_debug("imap: %s%s from %s", uid ? "UID " : "", name, mconn_ip(s->c));
    cmd->fn(s, ps, uid);
}

/* ---- input ------------------------------------------------------------ */

static void reset_command(struct imap_session *s)
{
    evbuffer_drain(s->cmd, evbuffer_get_length(s->cmd));
    s->literal_left = 0;
}

/* The command is whole: parse and run it. Its bytes (a password, say)
 * are cleared before the buffer is reused. */
static void execute(struct imap_session *s)
{
    size_t len = evbuffer_get_length(s->cmd);
    if (len == 0) {
        strcpy(s->tag, "*");
        imap_bad(s, "Empty command line");
        return;
    }
    char *buf = (char *)evbuffer_pullup(s->cmd, -1);
    if (buf == NULL) {
        imap_untagged(s, "BYE Out of memory");
        session_close(s);
        return;
    }
    struct imap_parser ps;
    imap_parser_init(&ps, buf, len);
    run_command(s, &ps);
    imap_parser_free(&ps);
    explicit_bzero(buf, len);
    reset_command(s);
}

static void current_tag(struct imap_session *s, const char *line, size_t len)
{
    if (evbuffer_get_length(s->cmd) > 0) {
        size_t n = evbuffer_get_length(s->cmd);
        if (n > IMAP_TAG_MAX + 1)
            n = IMAP_TAG_MAX + 1;
        char head[IMAP_TAG_MAX + 1];
        evbuffer_copyout(s->cmd, head, n);
        imap_peek_tag(head, n, s->tag);
    } else {
        imap_peek_tag(line, len, s->tag);
    }
}

/* One line of a command: the whole command, or up to a literal. */
static void command_line(struct imap_session *s, const char *line, size_t len)
{
    if (memchr(line, '\0', len) != NULL) {
        current_tag(s, line, len);
        reset_command(s);
        imap_bad(s, "NUL in command");
        return;
    }
    long long lit = imap_line_literal(line, len);
    size_t have = evbuffer_get_length(s->cmd) + len;
    if (lit == -2 || (lit >= 0 && (lit > IMAP_LITERAL_MAX
                                   || have + 2 + (unsigned long long)lit > IMAP_COMMAND_MAX))) {
        current_tag(s, line, len);
        reset_command(s);
        imap_bad(s, lit == -2 ? "Invalid or non-synchronizing literal" : "Literal too large");
        return;
    }
    if (have > IMAP_COMMAND_MAX) {
        current_tag(s, line, len);
        reset_command(s);
        imap_bad(s, "Command too long");
        return;
    }
    evbuffer_add(s->cmd, line, len);
    if (lit < 0) {
        execute(s);
        return;
    }
    evbuffer_add(s->cmd, "\r\n", 2);
    s->literal_left = (uint64_t)lit;
    mconn_printf(s->c, "+ Ready for literal data\r\n");
}

static bool read_literal(struct imap_session *s, struct evbuffer *in)
{
    size_t avail = evbuffer_get_length(in);
    if (avail == 0)
        return false;
    size_t n = avail < s->literal_left ? avail : (size_t)s->literal_left;
    evbuffer_remove_buffer(in, s->cmd, n);
    s->literal_left -= n;
    return true;
}

static void too_long(struct imap_session *s, struct evbuffer *in, size_t n)
{
    if (!s->discard_line && s->wait == W_COMMAND) {
        char head[IMAP_TAG_MAX + 1];
        size_t h = n < sizeof head ? n : sizeof head;
        evbuffer_copyout(in, head, h);
        current_tag(s, head, h);
        reset_command(s);
        imap_bad(s, "Command line too long");
    } else if (!s->discard_line) {
        idle_end(s);                 /* a SASL response or IDLE's DONE */
        imap_bad(s, "Line too long");
    }
    s->discard_line = true;
    evbuffer_drain(in, n);
}

/* One line (or literal part) if a whole one is buffered. */
static bool read_step(struct imap_session *s, struct evbuffer *in)
{
    if (s->literal_left > 0)
        return read_literal(s, in);
    size_t eol_len;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    if (p.pos < 0) {
        size_t n = evbuffer_get_length(in);
        if (n <= IMAP_LINE_MAX + 2)
            return false;
        too_long(s, in, n);
        return true;
    }
    size_t len = (size_t)p.pos + 1;
    if (s->discard_line || len > IMAP_LINE_MAX + 2) {
        if (!s->discard_line)
            too_long(s, in, len);
        else
            evbuffer_drain(in, len);
        s->discard_line = false;
        return true;
    }
    char line[IMAP_LINE_MAX + 3];
    evbuffer_remove(in, line, len);
    len--;                           /* the LF */
    if (len > 0 && line[len - 1] == '\r')
        len--;                       /* bare LF is tolerated */
    line[len] = '\0';
    switch (s->wait) {
    case W_SASL:
        sasl_response(s, line, len);
        break;
    case W_IDLE:
        idle_line(s, line, len);
        break;
    default:
        command_line(s, line, len);
        break;
    }
    explicit_bzero(line, len);
    return true;
}

static bool can_read(const struct imap_session *s)
{
    if (s->state == I_LOGOUT || mconn_pending(s->c) > IMAP_OUT_HIGH_WATER)
        return false;
    return s->wait == W_COMMAND || s->wait == W_SASL || s->wait == W_IDLE;
}

static void imap_input(void *sess, struct evbuffer *in)
{
    struct imap_session *s = sess;
    /* Input is offered again only once TLS is up (mconn.h). */
    if (s->wait == W_STARTTLS)
        s->wait = W_COMMAND;
    while (can_read(s) && read_step(s, in))
        ;
}

static void imap_drained(void *sess)
{
    struct imap_session *s = sess;
    if (s->wait == W_FETCH && imap_fetch_run(s))
        s->wait = W_COMMAND;
}

static void *imap_start(struct mconn *c)
{
    struct imap_session *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->cmd = evbuffer_new();
    if (s->cmd == NULL) {
        free(s);
        return NULL;
    }
    s->c = c;
    s->cfg = mconn_config(c);
    s->state = I_NOTAUTH;
    s->wait = W_COMMAND;
    strcpy(s->tag, "*");
    mconn_set_timeout(c, PRELOGIN_TIMEOUT);
    struct evbuffer *out = mconn_output(c);
    evbuffer_add_printf(out, "* OK [CAPABILITY ");
    put_capabilities(s, out);
    evbuffer_add_printf(out, "] %s IMAP4rev1 ready\r\n", s->cfg->hostname);
    return s;
}

static void imap_free(void *sess)
{
    struct imap_session *s = sess;
    if (s->job != NULL)
        imap_fetch_free(s->job);
    unselect(s);
    evbuffer_free(s->cmd);
    free(s);
}

const struct mproto imap_proto = {
    .name = "imap",
    .start = imap_start,
    .input = imap_input,
    .drained = imap_drained,
    .free = imap_free,
};
