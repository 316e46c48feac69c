/* Server certificate checks for the POP3/IMAP connections.
 *
 * Debian's libetpan does its TLS with GnuTLS and verifies nothing. Right
 * after the handshake, before any credentials are sent, the chain the
 * server presented (mailstream_get_certificate_chain) is checked here with
 * OpenSSL: against the configured CA file or directory (else the system
 * store) and the server name, or against a pinned SHA-256 fingerprint of
 * the leaf. */
#ifndef FETCHD_TLS_VERIFY_H
#define FETCHD_TLS_VERIFY_H

#include <stddef.h>
#include <libetpan/libetpan.h>

#include "fetchd_conf.h"

/* 0 when the peer of the TLS stream S is acceptable for account A (or A
 * has verify = false and no fingerprint), -1 with a reason in ERR. */
int tls_verify_peer(mailstream *s, const struct fd_account *a, char *err, size_t errlen);

/* libetpan's TLS context callback: sets SNI to the server name (DATA is the
 * account) unless it is an IP address. */
void tls_sni_callback(struct mailstream_ssl_context *ctx, void *data);

#endif
