/* OpenSSL server contexts shared by the SMTP, POP3 and IMAP listeners. */
#ifndef BMX_TLS_H
#define BMX_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

/* TLS 1.2 and later only, no anonymous or export suites. Returns NULL with
 * a reason in ERR when the certificate, key or cipher list is unusable or
 * the key does not match the certificate. */
SSL_CTX *tls_server_ctx(const char *cert, const char *key, const char *ciphers,
                        char *err, size_t errlen);

/* "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)" */
void tls_describe(SSL *ssl, char *buf, size_t len);

#endif
