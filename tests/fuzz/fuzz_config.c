/* libFuzzer target: config_load() (lib/config.c), the backupmx.conf loader:
 * our own lexer and statement checker, libconfuse, and the conversion and
 * value checks.
 *
 * Input: the text of a configuration file. "@TMP@" in it is replaced by a
 * directory made at start-up holding fixtures a config may name: cert.pem
 * and key.pem (a matching EC pair), other-key.pem (a key that does not
 * match) and rcpt.txt (a recipient list), so that the checks behind
 * tls { } and recipients = are reached. The text is written to a file in
 * that directory and loaded.
 *
 * Checked, as config.h promises: NULL exactly when at least one problem was
 * printed; every problem is one "FILE:LINE: message" line with LINE inside
 * the file; a loaded config is self-consistent (each domain and mailbox is
 * found by its own name, whatever the case and with a trailing dot; domain
 * names are lower case without a trailing dot; retry_min <= retry_max).
 * "unknown option 'NAME'" must name a line where NAME stands. */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "config.h"
#include "fuzz_util.h"

static char tmpdir[PATH_MAX];
static char conf_path[PATH_MAX];

static void write_key_pair(const char *cert_path, const char *key_path,
                           const char *other_key_path)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    EVP_PKEY *other = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (k == NULL || other == NULL || x == NULL)
        abort();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
    X509_set_pubkey(x, k);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (const unsigned char *)"mx2.example.test", -1, -1, 0);
    X509_set_issuer_name(x, name);
    if (X509_sign(x, k, EVP_sha256()) == 0)
        abort();
    FILE *fc = fopen(cert_path, "w"), *fk = fopen(key_path, "w"),
         *fo = fopen(other_key_path, "w");
    if (fc == NULL || fk == NULL || fo == NULL || PEM_write_X509(fc, x) != 1 ||
        PEM_write_PrivateKey(fk, k, NULL, NULL, 0, NULL, NULL) != 1 ||
        PEM_write_PrivateKey(fo, other, NULL, NULL, 0, NULL, NULL) != 1)
        abort();
    fclose(fc);
    fclose(fk);
    fclose(fo);
    X509_free(x);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}

static void remove_fixtures(void)
{
    static const char *const names[] = {"backupmx.conf", "cert.pem", "key.pem",
                                        "other-key.pem", "rcpt.txt"};
    char p[PATH_MAX + 32];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/bmx-fuzz-config.XXXXXX", t && *t ? t : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    char cert[PATH_MAX + 32], key[PATH_MAX + 32], other[PATH_MAX + 32],
        rcpt[PATH_MAX + 32];
    snprintf(cert, sizeof cert, "%s/cert.pem", tmpdir);
    snprintf(key, sizeof key, "%s/key.pem", tmpdir);
    snprintf(other, sizeof other, "%s/other-key.pem", tmpdir);
    snprintf(rcpt, sizeof rcpt, "%s/rcpt.txt", tmpdir);
    snprintf(conf_path, sizeof conf_path, "%s/backupmx.conf", tmpdir);
    write_key_pair(cert, key, other);
    FILE *f = fopen(rcpt, "w");
    if (f == NULL)
        abort();
    fputs("postmaster@example.test\nalice@example.test\n# a comment\n", f);
    fclose(f);
    atexit(remove_fixtures);
    return 0;
}

/* DATA with every "@TMP@" replaced by the fixture directory. */
static char *substitute(const uint8_t *data, size_t size, size_t *outlen)
{
    size_t tl = strlen(tmpdir), cap = size + 1, n = 0;
    for (size_t i = 0; i + 5 <= size; i++)
        if (memcmp(data + i, "@TMP@", 5) == 0)
            cap += tl;
    char *o = malloc(cap);
    if (o == NULL)
        abort();
    for (size_t i = 0; i < size;) {
        if (i + 5 <= size && memcmp(data + i, "@TMP@", 5) == 0) {
            memcpy(o + n, tmpdir, tl);
            n += tl;
            i += 5;
        } else {
            o[n++] = (char)data[i++];
        }
    }
    o[n] = '\0';
    *outlen = n;
    return o;
}

/* Line LINE (from 1) of TEXT, and its length in *LEN, or NULL. */
static const char *nth_line(const char *text, size_t len, long line, size_t *llen)
{
    const char *p = text, *end = text + len;
    for (long k = 1; k < line && p < end; k++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            return NULL;
        p = nl + 1;
    }
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    *llen = nl ? (size_t)(nl - p) : (size_t)(end - p);
    return p;
}

/* "unknown option 'NAME'" must point at a line holding NAME (for plain
 * names, which stand in the file as written): a check on the line
 * numbers, which the loader keeps right through comments and blanking. */
static void check_unknown_line(const char *msg, size_t mlen, long line,
                               const char *text, size_t tlen)
{
    static const char pre[] = "unknown option '";
    if (mlen < sizeof pre || memcmp(msg, pre, sizeof pre - 1) != 0)
        return;
    const char *name = msg + sizeof pre - 1;
    size_t n = strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                            "0123456789_-");
    if (n == 0 || name[n] != '\'')
        return;
    size_t ll;
    const char *l = nth_line(text, tlen, line, &ll);
    /* A quoted name is reported unescaped ("r\\lay" as 'rlay'). */
    if (l != NULL && (memchr(l, '"', ll) != NULL || memchr(l, '\'', ll) != NULL))
        return;
    FUZZ_CHECK(l != NULL && memmem(l, ll, name, n) != NULL,
               "'%.*s' reported on line %ld, which is '%.*s'", (int)n, name, line,
               l ? (int)ll : 0, l ? l : "");
}

static void check_problems(const char *out, size_t outlen, size_t nlines,
                           const char *text, size_t tlen)
{
    size_t pl = strlen(conf_path);
    const char *p = out, *end = out + outlen;
    FUZZ_CHECK(outlen > 0 && out[outlen - 1] == '\n', "problem output does not end "
               "in a newline: '%.*s'", (int)outlen, out);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        FUZZ_CHECK(strncmp(p, conf_path, pl) == 0 && p[pl] == ':',
                   "problem line without 'FILE:': '%.*s'", (int)(nl - p), p);
        char *q;
        long line = strtol(p + pl + 1, &q, 10);
        FUZZ_CHECK(q > p + pl + 1 && q[0] == ':' && q[1] == ' ',
                   "problem line without 'LINE: ': '%.*s'", (int)(nl - p), p);
        FUZZ_CHECK(line >= 0 && (size_t)line <= nlines + 1,
                   "line %ld in a file of %zu lines: '%.*s'", line, nlines,
                   (int)(nl - p), p);
        FUZZ_CHECK(nl > q + 2, "empty problem message");
        check_unknown_line(q + 2, (size_t)(nl - (q + 2)), line, text, tlen);
        p = nl + 1;
    }
}

static void check_config(const struct bmx_config *c)
{
    char name[600];
    for (size_t i = 0; i < c->ndomains; i++) {
        const struct bmx_domain *d = &c->domains[i];
        size_t n = strlen(d->name);
        FUZZ_CHECK(n > 0 && d->name[n - 1] != '.', "domain name '%s'", d->name);
        for (size_t k = 0; k < n; k++)
            FUZZ_CHECK(!(d->name[k] >= 'A' && d->name[k] <= 'Z'),
                       "upper case in domain '%s'", d->name);
        FUZZ_CHECK(config_find_domain(c, d->name) == d, "domain '%s' not found "
                   "by its name", d->name);
        if (n + 2 <= sizeof name) {
            memcpy(name, d->name, n);
            for (size_t k = 0; k < n; k++)
                if (name[k] >= 'a' && name[k] <= 'z')
                    name[k] = (char)(name[k] - 'a' + 'A');
            name[n] = '.';
            name[n + 1] = '\0';
            FUZZ_CHECK(config_find_domain(c, name) == d, "domain '%s' not found "
                       "as '%s'", d->name, name);
        }
        FUZZ_CHECK(d->mode == MODE_RELAY || d->mode == MODE_CATCHALL, "mode %d", d->mode);
        if (d->mode == MODE_CATCHALL)
            FUZZ_CHECK(d->mailbox != NULL && config_find_mailbox(c, d->mailbox) != NULL,
                       "catch-all domain '%s' without its mailbox", d->name);
    }
    for (size_t i = 0; i < c->nmailboxes; i++)
        FUZZ_CHECK(config_find_mailbox(c, c->mailboxes[i].name) == &c->mailboxes[i],
                   "mailbox '%s' not found by its name", c->mailboxes[i].name);
    FUZZ_CHECK(c->queue.retry_min <= c->queue.retry_max, "retry_min %lld > "
               "retry_max %lld", (long long)c->queue.retry_min,
               (long long)c->queue.retry_max);
    FUZZ_CHECK(c->listen.n > 0, "a config with nothing to listen on");
    FUZZ_CHECK(c->hostname != NULL && c->spool != NULL, "no hostname or spool");
    (void)config_find_domain(c, "");
    (void)config_find_domain(c, ".");
    (void)config_find_domain(c, "a.example.test.");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len;
    char *text = substitute(data, size, &len);
    FILE *f = fopen(conf_path, "w");
    if (f == NULL || (len > 0 && fwrite(text, 1, len, f) != len) || fclose(f) != 0)
        abort();
    size_t nlines = 1;
    for (size_t i = 0; i < len; i++)
        nlines += text[i] == '\n';

    char *out = NULL;
    size_t outlen = 0;
    FILE *errs = open_memstream(&out, &outlen);
    if (errs == NULL)
        abort();
    struct bmx_config *c = config_load(conf_path, errs);
    fclose(errs);
    if (c == NULL) {
        FUZZ_CHECK(outlen > 0, "config_load() failed without a message");
        check_problems(out, outlen, nlines, text, len);
    } else {
        FUZZ_CHECK(outlen == 0, "config loaded, but problems were printed: %s", out);
        check_config(c);
        config_free(c);
    }
    free(out);
    free(text);
    return 0;
}
