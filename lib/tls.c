/* TLS server context setup. */
#include "tls.h"

#include <stdio.h>
#include <openssl/err.h>

#define TLS_DEFAULT_CIPHERS "HIGH:!aNULL:!eNULL:!EXPORT:!MD5:!RC4:!3DES:!DES"

static void ssl_reason(const char *what, char *err, size_t errlen)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s: %s", what, e ? buf : "unknown error");
    ERR_clear_error();
}

SSL_CTX *tls_server_ctx(const char *cert, const char *key, const char *ciphers,
                        char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ssl_reason("cannot create TLS context", err, errlen);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION
                             | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(ctx, ciphers ? ciphers : TLS_DEFAULT_CIPHERS) != 1) {
        ssl_reason("bad cipher list", err, errlen);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ssl_reason(cert, err, errlen);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ssl_reason(key, err, errlen);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_reason("private key does not match the certificate", err, errlen);
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void tls_describe(SSL *ssl, char *buf, size_t len)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    int alg = 0;
    int bits = c ? SSL_CIPHER_get_bits(c, &alg) : 0;
    snprintf(buf, len, "%s with cipher %s (%d/%d bits)", SSL_get_version(ssl),
             c ? SSL_CIPHER_get_name(c) : "unknown", bits, alg);
}
