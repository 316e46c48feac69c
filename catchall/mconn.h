/* A POP3 or IMAP client connection: the bufferevent (plain or TLS), the
 * listener's TLS policy, timeouts, output flow control and one timer. The
 * protocol sessions (pop3_session.c, imap_session.c) are state machines
 * driven through struct mproto; they never see sockets or OpenSSL. */
#ifndef BMX_MCONN_H
#define BMX_MCONN_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct evbuffer;
struct mconn;

struct mproto {
    const char *name;                       /* "pop3" / "imap", for logs */
    /* A new connection: send the greeting, return the session (NULL to
     * drop the connection). */
    void *(*start)(struct mconn *c);
    /* Input arrived (or was re-offered): consume whole lines/literals from
     * IN. Leave what is incomplete, or what must wait (output is full,
     * a delayed reply is pending); it is offered again later. */
    void (*input)(void *sess, struct evbuffer *in);
    /* Output fell below the low-water mark: a session streaming a large
     * message adds the next part here. input() is re-offered after it. */
    void (*drained)(void *sess);
    /* The connection is gone (peer closed, timeout, error, mconn_close
     * done). Free the session; do not call mconn_* on C afterwards. */
    void (*free)(void *sess);
};

/* Output the session may append to directly. */
struct evbuffer *mconn_output(struct mconn *c);
void mconn_printf(struct mconn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Bytes waiting to be written. Sessions stop producing above ~256 KB and
 * continue in drained(). */
size_t mconn_pending(const struct mconn *c);

const char *mconn_ip(const struct mconn *c);
const struct bmx_config *mconn_config(const struct mconn *c);
/* TLS is active on the connection. */
bool mconn_tls_active(const struct mconn *c);
/* STARTTLS/STLS may be offered: the listener is "starttls" and TLS is not
 * yet active. */
bool mconn_starttls_offered(const struct mconn *c);
/* Plaintext passwords may be accepted now: TLS is active, or the listener
 * is tls = "none" and bound to loopback. */
bool mconn_login_allowed(const struct mconn *c);

/* Starts TLS after the pending output (the "OK, begin TLS" reply) is
 * flushed. Input already buffered is discarded (RFC 2595 section 3.1,
 * CVE-2011-0411). input() is next called with TLS data. Returns -1 if TLS
 * cannot start; the connection is then closed. */
int mconn_starttls(struct mconn *c);

/* Closes after the pending output is written. No more input is offered. */
void mconn_close(struct mconn *c);

/* Idle timeout in seconds for reads (IMAP IDLE raises it). */
void mconn_set_timeout(struct mconn *c, long seconds);

/* While paused, input is not offered (used during login delays). */
void mconn_pause(struct mconn *c, bool paused);

/* Runs FN(sess) once after MS milliseconds (one timer per connection; a
 * second call replaces the first). */
void mconn_after(struct mconn *c, unsigned ms, void (*fn)(void *sess));

/* Re-offers buffered input (after unpausing from a timer, say). */
void mconn_kick(struct mconn *c);

#endif
