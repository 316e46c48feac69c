/* One POP3/IMAP connection: bufferevent plumbing, STARTTLS, flow control
 * and deferred close. The session never frees the connection itself: it
 * asks (mconn_close) and the connection goes from a top-level callback, so
 * no session code runs on freed memory. */
#include "mconn_private.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "ipcount.h"
#include "log.h"
#include "tls.h"

/* A client that keeps sending while we cannot consume (a paused login, a
 * large RETR being written) is not read further than this. */
#define READ_HIGH_WATER (1024 * 1024)
#define WRITE_TIMEOUT 600
#define DEFAULT_TIMEOUT 600

struct mconn {
    struct mconn *prev, *next;
    struct mail_listener *l;
    struct bufferevent *bev;
    void *sess;
    struct event *timer, *kick;
    struct evbuffer_cb_entry *under_cb;     /* on the socket below a STARTTLS filter */
    void (*timer_fn)(void *sess);
    char ip[INET6_ADDRSTRLEN];
    long timeout;
    bool tls_active, closing, paused, starttls_pending;
};

static void setup_bev(struct mconn *c);

/* ---- the session's side ------------------------------------------------ */

struct evbuffer *mconn_output(struct mconn *c)
{
    return bufferevent_get_output(c->bev);
}

void mconn_printf(struct mconn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(bufferevent_get_output(c->bev), fmt, ap);
    va_end(ap);
}

/* After STARTTLS the filter hands its output to the socket bufferevent
 * below at once: both count, or flow control and close-after-flush would
 * only see the (empty) filter. */
size_t mconn_pending(const struct mconn *c)
{
    size_t n = evbuffer_get_length(bufferevent_get_output(c->bev));
    struct bufferevent *under = bufferevent_get_underlying(c->bev);
    if (under != NULL)
        n += evbuffer_get_length(bufferevent_get_output(under));
    return n;
}

const char *mconn_ip(const struct mconn *c)
{
    return c->ip;
}

const struct bmx_config *mconn_config(const struct mconn *c)
{
    return c->l->ms->cfg;
}

bool mconn_tls_active(const struct mconn *c)
{
    return c->tls_active;
}

bool mconn_starttls_offered(const struct mconn *c)
{
    return c->l->tls == TLSIN_STARTTLS && !c->tls_active && c->l->ms->tls != NULL;
}

bool mconn_login_allowed(const struct mconn *c)
{
    return c->tls_active || (c->l->tls == TLSIN_NONE && c->l->loopback);
}

int mconn_starttls(struct mconn *c)
{
    if (!mconn_starttls_offered(c))
        return -1;
    c->starttls_pending = true;
    event_active(c->kick, EV_TIMEOUT, 1);
    return 0;
}

void mconn_close(struct mconn *c)
{
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    event_active(c->kick, EV_TIMEOUT, 1);
}

static void apply_timeouts(struct mconn *c)
{
    struct timeval rt = { .tv_sec = c->timeout }, wt = { .tv_sec = WRITE_TIMEOUT };
    bufferevent_set_timeouts(c->bev, &rt, &wt);
}

void mconn_set_timeout(struct mconn *c, long seconds)
{
    c->timeout = seconds;
    apply_timeouts(c);
}

void mconn_pause(struct mconn *c, bool paused)
{
    c->paused = paused;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct mconn *c = arg;
    void (*fn)(void *) = c->timer_fn;
    c->timer_fn = NULL;
    if (fn != NULL && !c->closing)
        fn(c->sess);
    event_active(c->kick, EV_TIMEOUT, 1);
}

void mconn_after(struct mconn *c, unsigned ms, void (*fn)(void *sess))
{
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
    c->timer_fn = fn;
    evtimer_add(c->timer, &tv);
}

void mconn_kick(struct mconn *c)
{
    event_active(c->kick, EV_TIMEOUT, 1);
}

/* ---- driving the session ------------------------------------------------ */

static void offer_input(struct mconn *c)
{
    if (c->closing || c->paused || c->starttls_pending || c->sess == NULL)
        return;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (evbuffer_get_length(in) > 0)
        c->l->proto->input(c->sess, in);
    if (c->starttls_pending)
        /* RFC 2595 3.1 / CVE-2011-0411: nothing sent in plaintext behind
         * STARTTLS may run inside the TLS session. */
        evbuffer_drain(in, evbuffer_get_length(in));
}

/* The socket below the TLS filter wrote its last byte: the filter's own
 * write callback has long fired, so this is where "all written" is. */
static void under_output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct mconn *c = arg;
    if (info->n_deleted > 0 && evbuffer_get_length(buf) == 0)
        event_active(c->kick, EV_TIMEOUT, 1);
}

static void begin_tls(struct mconn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    c->starttls_pending = false;
    SSL *ssl = SSL_new(c->l->ms->tls);
    struct bufferevent *tb = ssl ? bufferevent_openssl_filter_new(
        c->l->ms->base, c->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS) : NULL;
    if (tb == NULL) {
        if (ssl != NULL)
            SSL_free(ssl);
        log_warn("%s: cannot start TLS for %s", c->l->proto->name, c->ip);
        c->closing = true;
        event_active(c->kick, EV_TIMEOUT, 1);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
    c->under_cb = evbuffer_add_cb(bufferevent_get_output(c->bev), under_output_cb, c);
    c->bev = tb;
    c->tls_active = true;
    setup_bev(c);
}

/* Output is fully written: finish a close or a STARTTLS, or let a
 * streaming session continue, then look at the input again. */
static void output_empty(struct mconn *c)
{
    if (c->closing) {
        mconn_destroy(c);
        return;
    }
    if (c->starttls_pending) {
        begin_tls(c);
        return;
    }
    if (c->l->proto->drained != NULL && c->sess != NULL)
        c->l->proto->drained(c->sess);
    offer_input(c);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct mconn *c = arg;
    if (mconn_pending(c) == 0) {
        output_empty(c);
        return;
    }
    offer_input(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct mconn *c = arg;
    if (bev != c->bev)
        return;
    offer_input(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct mconn *c = arg;
    if (bev != c->bev || mconn_pending(c) > 0)
        return;                 /* under_output_cb says when */
    output_empty(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct mconn *c = arg;
    if (bev != c->bev)
        return;
    if (what & BEV_EVENT_CONNECTED) {
        char info[160];
        tls_describe(bufferevent_openssl_get_ssl(bev), info, sizeof info);
        log_info("%s: TLS established from %s: %s", c->l->proto->name, c->ip, info);
        return;
    }
    if (!c->closing)
        log_info("%s: %s from %s", c->l->proto->name,
                 (what & BEV_EVENT_TIMEOUT) ? "timeout" : "lost connection", c->ip);
    mconn_destroy(c);
}

static void setup_bev(struct mconn *c)
{
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, READ_HIGH_WATER);
    apply_timeouts(c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- life cycle ----------------------------------------------------------- */

static struct bufferevent *new_bev(struct mail_listener *l, int fd)
{
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (l->tls != TLSIN_IMPLICIT)
        return bufferevent_socket_new(l->ms->base, fd, opts);
    SSL *ssl = SSL_new(l->ms->tls);
    if (ssl == NULL)
        return NULL;
    struct bufferevent *b = bufferevent_openssl_socket_new(l->ms->base, fd, ssl,
                                                           BUFFEREVENT_SSL_ACCEPTING, opts);
    if (b == NULL)
        SSL_free(ssl);
    else
        bufferevent_openssl_set_allow_dirty_shutdown(b, 1);
    return b;
}

void mconn_start(struct mail_listener *l, int fd, const char *ip, const char *refuse)
{
    struct mail_server *ms = l->ms;
    struct mconn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        evutil_closesocket(fd);
        ms->nconn--;
        ipcount_release(ms->perip, ip);
        return;
    }
    c->l = l;
    snprintf(c->ip, sizeof c->ip, "%s", ip);
    c->timeout = DEFAULT_TIMEOUT;
    c->next = ms->conns;
    if (c->next != NULL)
        c->next->prev = c;
    ms->conns = c;
    c->bev = new_bev(l, fd);
    c->timer = evtimer_new(ms->base, timer_cb, c);
    c->kick = event_new(ms->base, -1, 0, kick_cb, c);
    if (c->bev == NULL || c->timer == NULL || c->kick == NULL) {
        if (c->bev == NULL)
            evutil_closesocket(fd);
        mconn_destroy(c);
        return;
    }
    c->tls_active = l->tls == TLSIN_IMPLICIT;
    setup_bev(c);
    log_info("%s: connect from %s", l->proto->name, ip);
    if (refuse != NULL) {
        evbuffer_add(mconn_output(c), refuse, strlen(refuse));
        mconn_close(c);
        return;
    }
    c->sess = l->proto->start(c);
    if (c->sess == NULL)
        mconn_close(c);
}

void mconn_destroy(struct mconn *c)
{
    struct mail_server *ms = c->l->ms;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        ms->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    ms->nconn--;
    ipcount_release(ms->perip, c->ip);
    if (c->sess != NULL)
        c->l->proto->free(c->sess);
    log_info("%s: disconnect from %s", c->l->proto->name, c->ip);
    struct bufferevent *under = c->bev ? bufferevent_get_underlying(c->bev) : NULL;
    if (under != NULL && c->under_cb != NULL)
        evbuffer_remove_cb_entry(bufferevent_get_output(under), c->under_cb);
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    if (c->timer != NULL)
        event_free(c->timer);
    if (c->kick != NULL)
        event_free(c->kick);
    free(c);
}
