/* POP3 retrieval with libetpan: CAPA, STLS, USER/PASS, LIST+UIDL, RETR,
 * DELE, QUIT (RFC 1939, 2449, 2595). Deletions only take effect at QUIT:
 * after an error the connection is dropped without QUIT, so nothing marked
 * in that session is deleted. */
#include "fetcher.h"
#include "log.h"
#include "tls_verify.h"

#include <libetpan/libetpan.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct pop3 {
    mailpop3 *pop;
    bool stls, pipelining, uidl, user;
};

static const char *pop3_strerror(int r)
{
    switch (r) {
    case MAILPOP3_ERROR_BAD_STATE: return "unexpected state";
    case MAILPOP3_ERROR_UNAUTHORIZED: return "the server refused the connection";
    case MAILPOP3_ERROR_STREAM: return "connection lost or timed out";
    case MAILPOP3_ERROR_DENIED: return "denied";
    case MAILPOP3_ERROR_BAD_USER: return "user refused";
    case MAILPOP3_ERROR_BAD_PASSWORD: return "login failed";
    case MAILPOP3_ERROR_CANT_LIST: return "LIST failed";
    case MAILPOP3_ERROR_NO_SUCH_MESSAGE: return "no such message";
    case MAILPOP3_ERROR_MEMORY: return "out of memory";
    case MAILPOP3_ERROR_CONNECTION_REFUSED: return "connection refused";
    case MAILPOP3_ERROR_STLS_NOT_SUPPORTED: return "STLS not supported";
    case MAILPOP3_ERROR_SSL: return "TLS handshake failed";
    default: return "error";
    }
}

static int fail(struct fetcher *f, struct pop3 *p, const char *what, int r)
{
    const char *resp = p->pop != NULL ? p->pop->pop3_response : NULL;
    snprintf(f->err, sizeof f->err, "%s: %s%s%s%s", what, pop3_strerror(r),
             resp ? " (server said: " : "", resp ? resp : "", resp ? ")" : "");
    return FETCH_ERROR;
}

static void logger_cb(mailpop3 *pop, int type, const char *str, size_t size, void *ctx)
{
    (void)pop;
    trace_protocol(ctx, type, str, size);
}

static void read_capa(struct pop3 *p)
{
    clist *capa = NULL;
    p->stls = p->pipelining = p->uidl = p->user = false;
    if (mailpop3_capa(p->pop, &capa) != MAILPOP3_NO_ERROR || capa == NULL) {
        p->uidl = p->user = true;   /* no CAPA: assume RFC 1939 */
        return;
    }
    for (clistiter *it = clist_begin(capa); it != NULL; it = clist_next(it)) {
        struct mailpop3_capa *c = clist_content(it);
        if (strcasecmp(c->cap_name, "STLS") == 0)
            p->stls = true;
        else if (strcasecmp(c->cap_name, "PIPELINING") == 0)
            p->pipelining = true;
        else if (strcasecmp(c->cap_name, "UIDL") == 0)
            p->uidl = true;
        else if (strcasecmp(c->cap_name, "USER") == 0)
            p->user = true;
    }
    mailpop3_capa_resp_free(capa);
}

static int pop3_connect(struct fetcher *f, struct pop3 *p)
{
    const struct fd_account *a = f->acct;
    int r;
    if (a->tls == FTLS_IMPLICIT)
        r = mailpop3_ssl_connect_with_callback(p->pop, a->server, (uint16_t)a->port,
                                               tls_sni_callback, (void *)a);
    else
        r = mailpop3_socket_connect(p->pop, a->server, (uint16_t)a->port);
    if (r != MAILPOP3_NO_ERROR) {
        snprintf(f->err, sizeof f->err, "cannot connect to %s port %d%s: %s", a->server, a->port,
                 a->tls == FTLS_IMPLICIT ? " (implicit TLS)" : "", pop3_strerror(r));
        return FETCH_ERROR;
    }
    read_capa(p);
    if (a->tls == FTLS_STARTTLS) {
        if (!p->stls) {
            snprintf(f->err, sizeof f->err,
                     "%s does not offer STLS (tls = \"starttls\"): not sending the password",
                     a->server);
            return FETCH_ERROR;
        }
        r = mailpop3_socket_starttls_with_callback(p->pop, tls_sni_callback, (void *)a);
        if (r != MAILPOP3_NO_ERROR)
            return fail(f, p, "STLS", r);
        read_capa(p);
    }
    if (a->tls != FTLS_NONE) {
        char why[400];
        if (tls_verify_peer(p->pop->pop3_stream, a, why, sizeof why) != 0) {
            snprintf(f->err, sizeof f->err, "TLS with %s port %d: %s (not logging in)", a->server,
                     a->port, why);
            return FETCH_ERROR;
        }
    }
    return FETCH_OK;
}

static int pop3_open(struct fetcher *f)
{
    const struct fd_account *a = f->acct;
    struct pop3 *p = calloc(1, sizeof *p);
    if (p == NULL || (p->pop = mailpop3_new(0, NULL)) == NULL) {
        free(p);
        snprintf(f->err, sizeof f->err, "out of memory");
        return FETCH_ERROR;
    }
    f->impl = p;
    mailpop3_set_timeout(p->pop, (time_t)a->timeout);
    if (log_verbose())
        mailpop3_set_logger(p->pop, logger_cb, (void *)a);
    if (pop3_connect(f, p) != FETCH_OK)
        return FETCH_ERROR;
    int r = mailpop3_user(p->pop, a->user);
    if (r == MAILPOP3_NO_ERROR)
        r = mailpop3_pass(p->pop, a->password);
    if (r != MAILPOP3_NO_ERROR)
        return fail(f, p, "login", r);
    return FETCH_OK;
}

static int pop3_list(struct fetcher *f, struct fetch_msg **out, size_t *nout)
{
    struct pop3 *p = f->impl;
    carray *tab = NULL;
    int r = mailpop3_list(p->pop, &tab);
    if (r != MAILPOP3_NO_ERROR)
        return fail(f, p, "LIST", r);
    size_t n = carray_count(tab), k = 0;
    struct fetch_msg *msgs = calloc(n ? n : 1, sizeof *msgs);
    if (msgs == NULL) {
        snprintf(f->err, sizeof f->err, "out of memory");
        return FETCH_ERROR;
    }
    for (size_t i = 0; i < n; i++) {
        struct mailpop3_msg_info *info = carray_get(tab, (unsigned)i);
        if (info == NULL || info->msg_deleted)
            continue;
        if (info->msg_uidl == NULL) {
            fetch_msgs_free(msgs, k);
            snprintf(f->err, sizeof f->err,
                     "the server gave no UIDL for message %u: cannot tell messages apart "
                     "across runs, not fetching", info->msg_index);
            return FETCH_ERROR;
        }
        msgs[k].id = strdup(info->msg_uidl);
        msgs[k].num = info->msg_index;
        msgs[k].size = info->msg_size;
        if (msgs[k++].id == NULL) {
            fetch_msgs_free(msgs, k);
            snprintf(f->err, sizeof f->err, "out of memory");
            return FETCH_ERROR;
        }
    }
    *out = msgs;
    *nout = k;
    return FETCH_OK;
}

static int pop3_fetch(struct fetcher *f, struct fetch_msg *const *msgs, size_t n, fetch_cb cb,
                      void *arg)
{
    struct pop3 *p = f->impl;
    for (size_t i = 0; i < n; i++) {
        char *body = NULL;
        size_t len = 0;
        int r = mailpop3_retr(p->pop, msgs[i]->num, &body, &len);
        if (r != MAILPOP3_NO_ERROR) {
            char what[64];
            snprintf(what, sizeof what, "RETR %u", msgs[i]->num);
            return fail(f, p, what, r);
        }
        int stop = cb(msgs[i], body, len, arg);
        mailpop3_retr_free(body);
        if (stop)
            return FETCH_STOPPED;
    }
    return FETCH_OK;
}

static int pop3_remove(struct fetcher *f, struct fetch_msg *const *msgs, size_t n)
{
    struct pop3 *p = f->impl;
    for (size_t i = 0; i < n; i++) {
        int r = mailpop3_dele(p->pop, msgs[i]->num);
        if (r != MAILPOP3_NO_ERROR) {
            char what[64];
            snprintf(what, sizeof what, "DELE %u", msgs[i]->num);
            return fail(f, p, what, r);
        }
    }
    return FETCH_OK;
}

static void free_session(struct fetcher *f)
{
    struct pop3 *p = f->impl;
    if (p == NULL)
        return;
    if (p->pop != NULL)
        mailpop3_free(p->pop);
    free(p);
    f->impl = NULL;
}

static int pop3_commit(struct fetcher *f)
{
    struct pop3 *p = f->impl;
    int r = mailpop3_quit(p->pop);
    free_session(f);
    if (r != MAILPOP3_NO_ERROR) {
        snprintf(f->err, sizeof f->err, "QUIT: %s", pop3_strerror(r));
        return FETCH_ERROR;
    }
    return FETCH_OK;
}

/* Drops the connection without QUIT, so that no DELE of this session takes
 * effect. mailpop3_free() would send QUIT: close the stream first and
 * release what libetpan's QUIT would have released. */
static void pop3_close(struct fetcher *f)
{
    struct pop3 *p = f->impl;
    if (p == NULL)
        return;
    mailpop3 *pop = p->pop;
    if (pop != NULL && pop->pop3_stream != NULL) {
        mailstream_close(pop->pop3_stream);
        pop->pop3_stream = NULL;
        if (pop->pop3_msg_tab != NULL) {
            for (unsigned i = 0; i < carray_count(pop->pop3_msg_tab); i++) {
                struct mailpop3_msg_info *info = carray_get(pop->pop3_msg_tab, i);
                free(info->msg_uidl);
                free(info);
            }
            carray_free(pop->pop3_msg_tab);
            pop->pop3_msg_tab = NULL;
        }
        free(pop->pop3_timestamp);
        pop->pop3_timestamp = NULL;
    }
    free_session(f);
}

const struct fetcher_ops pop3_fetcher_ops = {
    .name = "pop3",
    .open = pop3_open,
    .list = pop3_list,
    .fetch = pop3_fetch,
    .remove = pop3_remove,
    .commit = pop3_commit,
    .close = pop3_close,
};
