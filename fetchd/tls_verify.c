/* Certificate verification with OpenSSL over libetpan's GnuTLS streams
 * (see tls_verify.h). */
#include "tls_verify.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

static bool is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

void tls_sni_callback(struct mailstream_ssl_context *ctx, void *data)
{
    const struct fd_account *a = data;
    if (!is_ip_literal(a->server))
        mailstream_ssl_set_server_name(ctx, a->server);
}

static void subject_of(X509 *x, char *buf, size_t len)
{
    X509_NAME_oneline(X509_get_subject_name(x), buf, (int)len);
}

static int check_fingerprint(X509 *leaf, const char *want, char *err, size_t errlen)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (!X509_digest(leaf, EVP_sha256(), md, &n)) {
        snprintf(err, errlen, "cannot compute the certificate's fingerprint");
        return -1;
    }
    for (unsigned i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (strcmp(hex, want) == 0)
        return 0;
    snprintf(err, errlen, "certificate fingerprint sha256:%s does not match the pinned one", hex);
    return -1;
}

static X509_STORE *make_store(const struct fd_account *a, char *err, size_t errlen)
{
    X509_STORE *store = X509_STORE_new();
    if (store == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int ok;
    if (a->ca != NULL) {
        struct stat st;
        bool dir = stat(a->ca, &st) == 0 && S_ISDIR(st.st_mode);
        ok = X509_STORE_load_locations(store, dir ? NULL : a->ca, dir ? a->ca : NULL);
    } else {
        ok = X509_STORE_set_default_paths(store);
    }
    if (!ok) {
        snprintf(err, errlen, "cannot load the CA certificates%s%s: %s",
                 a->ca ? " from " : "", a->ca ? a->ca : "",
                 ERR_reason_error_string(ERR_peek_last_error()));
        ERR_clear_error();
        X509_STORE_free(store);
        return NULL;
    }
    return store;
}

static int verify_chain(X509 *leaf, STACK_OF(X509) *chain, const struct fd_account *a,
                        char *err, size_t errlen)
{
    X509_STORE *store = make_store(a, err, errlen);
    if (store == NULL)
        return -1;
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int rc = -1;
    if (ctx == NULL || !X509_STORE_CTX_init(ctx, store, leaf, chain)) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
    if (is_ip_literal(a->server))
        X509_VERIFY_PARAM_set1_ip_asc(param, a->server);
    else
        X509_VERIFY_PARAM_set1_host(param, a->server, 0);
    if (X509_verify_cert(ctx) == 1) {
        rc = 0;
        goto done;
    }
    int e = X509_STORE_CTX_get_error(ctx);
    X509 *bad = X509_STORE_CTX_get_current_cert(ctx);
    char subj[256] = "";
    subject_of(bad ? bad : leaf, subj, sizeof subj);
    if (e == X509_V_ERR_HOSTNAME_MISMATCH || e == X509_V_ERR_IP_ADDRESS_MISMATCH)
        snprintf(err, errlen, "certificate %s is not valid for %s", subj, a->server);
    else
        snprintf(err, errlen, "certificate verification failed: %s (depth %d, %s)",
                 X509_verify_cert_error_string(e), X509_STORE_CTX_get_error_depth(ctx), subj);
done:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    ERR_clear_error();
    return rc;
}

int tls_verify_peer(mailstream *s, const struct fd_account *a, char *err, size_t errlen)
{
    if (!a->verify && a->fingerprint == NULL)
        return 0;
    carray *certs = mailstream_get_certificate_chain(s);
    if (certs == NULL || carray_count(certs) == 0) {
        if (certs != NULL)
            mailstream_certificate_chain_free(certs);
        snprintf(err, errlen, "the server presented no certificate");
        return -1;
    }
    X509 *leaf = NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    int rc = -1;
    for (unsigned i = 0; i < carray_count(certs); i++) {
        MMAPString *der = carray_get(certs, i);
        const unsigned char *p = (const unsigned char *)der->str;
        X509 *x = d2i_X509(NULL, &p, (long)der->len);
        if (x == NULL) {
            snprintf(err, errlen, "cannot parse certificate %u of the server's chain", i);
            goto done;
        }
        if (i == 0)
            leaf = x;
        else
            sk_X509_push(chain, x);
    }
    if (a->fingerprint != NULL)
        rc = check_fingerprint(leaf, a->fingerprint, err, errlen);
    else
        rc = verify_chain(leaf, chain, a, err, errlen);
done:
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    mailstream_certificate_chain_free(certs);
    ERR_clear_error();
    return rc;
}
