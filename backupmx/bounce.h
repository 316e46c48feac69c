/* Delivery status notifications (RFC 3464 in RFC 3462/6522 multipart/report)
 * for failed recipients and delay warnings. Pure: builds the message, the
 * caller queues it (sender <>, recipient = the original sender). */
#ifndef BMX_BOUNCE_H
#define BMX_BOUNCE_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct queue_envelope;

enum bounce_kind { BOUNCE_FAILED, BOUNCE_DELAYED };

struct bounce_rcpt {
    const char *addr;            /* final recipient */
    const char *orcpt;           /* original recipient (DSN ORCPT) or NULL */
    const char *status;          /* enhanced code, e.g. "5.1.1" or "4.4.7" */
    const char *remote_mta;      /* host name of the next hop, or NULL */
    const char *diagnostic;      /* the remote reply ("550 5.1.1 ...") or our reason */
    int64_t last_attempt;        /* unix time, 0 = none */
    int64_t retry_until;         /* BOUNCE_DELAYED: unix time the queue gives
                                  * up (Will-Retry-Until), 0 = not given */
};

/* Appends the whole DSN message (headers and body, CRLF line ends) to OUT.
 * HOSTNAME is ours (Reporting-MTA, From: MAILER-DAEMON@HOSTNAME); ID names
 * the new message (Message-ID); ENV is the original envelope (sender,
 * arrival, queue id); ORIG is the original message (only its header
 * section is included; may be NULL or empty, then the third part is left
 * out). Returns 0, or -1 with errno ENOMEM, or EINVAL when there is nothing
 * to report (N == 0) or the original sender is <> (a DSN is never sent to
 * the null sender, RFC 5321 4.5.5). On failure nothing is appended to OUT.
 *
 * Everything taken from the network (addresses, replies, the client's
 * names) is cleaned: control characters can never start a new line, and
 * no line exceeds 998 octets (long fields are folded, then truncated).
 * The notice and the delivery-status part are pure US-ASCII: 8-bit octets
 * in an address are written in the RFC 6533 "utf-8" address type's
 * \x{HEX} form, elsewhere as '?'. The returned headers (third part) are
 * kept byte for byte (line ends made CRLF, NULs dropped, lines cut at 998
 * octets): when they hold 8-bit octets, that part and the message are
 * labelled Content-Transfer-Encoding: 8bit, and the DSN must be relayed
 * with BODY=8BITMIME: see bounce_qenv_flags(). */
int bounce_build(struct evbuffer *out, enum bounce_kind kind, const char *hostname,
                 const char *id, const struct queue_envelope *env,
                 const struct bounce_rcpt *rcpts, size_t n, struct evbuffer *orig,
                 int64_t now);

/* The QENV_* flags to queue the DSN that bounce_build() makes from the same
 * ENV and ORIG with: QENV_8BITMIME when it has 8-bit octets (in the returned
 * headers or in the To: address), plus QENV_SMTPUTF8 when the original
 * sender's address (our recipient and To:) is not ASCII. 8-bit returned
 * headers alone need only 8BITMIME: they are body content of the DSN. */
uint32_t bounce_qenv_flags(const struct queue_envelope *env, struct evbuffer *orig);

#endif
