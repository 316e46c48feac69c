/* backupmx.conf loader.
 *
 * The file is read by conf_load.c (lex, check against the schema below,
 * libconfuse), which reports every syntax problem with its real line and
 * keeps the line of every section, option and list item. This file turns
 * the values into plain structs, where values and cross-references are
 * checked and reported with those lines.
 *
 * Every option is a string in the libconfuse schema: numbers, booleans,
 * durations and sizes are converted here, so that all value errors are ours
 * (all reported, with the right line) rather than libconfuse's (first only).
 *
 * Not thread-safe: libconfuse's lexer is a global flex scanner anyway. */
#include "config.h"
#include "conf_load.h"
#include "units.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Defaults and schema
 */

#define DEF_SPOOL "/var/spool/backupmx"
static const char *const def_listen[] = { "0.0.0.0:25", "[::]:25", NULL };

static cfg_opt_t tls_opts[] = {
    CFG_STR("cert", NULL, CFGF_NONE),
    CFG_STR("key", NULL, CFGF_NONE),
    CFG_STR("ciphers", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t limits_opts[] = {
    CFG_STR("message_size", NULL, CFGF_NONE),
    CFG_STR("recipients", NULL, CFGF_NONE),
    CFG_STR("connections", NULL, CFGF_NONE),
    CFG_STR("connections_per_ip", NULL, CFGF_NONE),
    CFG_STR("command_timeout", NULL, CFGF_NONE),
    CFG_STR("data_timeout", NULL, CFGF_NONE),
    CFG_STR("errors", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t queue_opts[] = {
    CFG_STR("lifetime", NULL, CFGF_NONE),
    CFG_STR("retry_min", NULL, CFGF_NONE),
    CFG_STR("retry_max", NULL, CFGF_NONE),
    CFG_STR("delay_warning", NULL, CFGF_NONE),
    CFG_STR("concurrency", NULL, CFGF_NONE),
    CFG_STR("mx_port", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t domain_opts[] = {
    CFG_STR("mode", NULL, CFGF_NONE),
    CFG_STR_LIST("primary", NULL, CFGF_NONE),
    CFG_STR("recipients", NULL, CFGF_NONE),
    CFG_STR("verify", NULL, CFGF_NONE),
    CFG_STR("verify_ttl", NULL, CFGF_NONE),
    CFG_STR("unverified", NULL, CFGF_NONE),
    CFG_STR("tls", NULL, CFGF_NONE),
    CFG_STR("fingerprint", NULL, CFGF_NONE),
    CFG_STR("lifetime", NULL, CFGF_NONE),
    CFG_STR("subdomains", NULL, CFGF_NONE),
    CFG_STR("mailbox", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t mailbox_opts[] = {
    CFG_STR("password", NULL, CFGF_NONE),
    CFG_STR("maildir", NULL, CFGF_NONE),
    CFG_STR("quota", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t listener_opts[] = {
    CFG_STR_LIST("listen", NULL, CFGF_NONE),
    CFG_STR("tls", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t etrn_opts[] = {
    CFG_STR_LIST("allow", NULL, CFGF_NONE),
    CFG_END()
};

/* No title-dupes flag on domain/mailbox: duplicates are found (case- and
 * trailing-dot-insensitively) and dropped by the check pass, which also
 * keeps libconfuse's section order equal to the outline's. */
static cfg_opt_t top_opts[] = {
    CFG_STR("hostname", NULL, CFGF_NONE),
    CFG_STR("spool", NULL, CFGF_NONE),
    CFG_STR("user", NULL, CFGF_NONE),
    CFG_STR_LIST("listen", NULL, CFGF_NONE),
    CFG_STR_LIST("resolver", NULL, CFGF_NONE),
    CFG_STR("control", NULL, CFGF_NONE),
    CFG_SEC("tls", tls_opts, CFGF_NONE),
    CFG_SEC("limits", limits_opts, CFGF_NONE),
    CFG_SEC("queue", queue_opts, CFGF_NONE),
    CFG_SEC("domain", domain_opts, CFGF_MULTI | CFGF_TITLE),
    CFG_SEC("mailbox", mailbox_opts, CFGF_MULTI | CFGF_TITLE),
    CFG_SEC("pop3", listener_opts, CFGF_NONE),
    CFG_SEC("imap", listener_opts, CFGF_NONE),
    CFG_SEC("etrn", etrn_opts, CFGF_NONE),
    CFG_END()
};

/* Domain titles compare like domain names: case and one trailing dot do not
 * matter. Mailbox names are login names: case does not matter either. */
static bool same_title(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 0 && a[la - 1] == '.')
        la--;
    if (lb > 0 && b[lb - 1] == '.')
        lb--;
    return la == lb && strncasecmp(a, b, la) == 0;
}

static const struct confschema schema = { .opts = top_opts, .same_title = same_title };

/* ------------------------------------------------------------------------
 * Values
 */

static void strlist_add(struct strlist *l, const char *v)
{
    l->v = conf_xrealloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = conf_xstrdup(v);
}

static void strlist_free(struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* The list's values, or DEFS when the option is not in the file. */
static void get_list(const struct confsec *s, const char *name, const char *const *defs,
                     struct strlist *out)
{
    unsigned n = confsec_list_size(s, name);
    for (unsigned i = 0; i < n; i++)
        strlist_add(out, confsec_list_item(s, name, i));
    for (size_t i = 0; n == 0 && !confsec_given(s, name) && defs && defs[i]; i++)
        strlist_add(out, defs[i]);
}

/* ------------------------------------------------------------------------
 * Syntax of names and addresses
 */
/* Lower case without one trailing dot: how domains are stored and compared. */
static char *normalize_domain(const char *name)
{
    char *d = conf_xstrdup(name);
    size_t n = strlen(d);
    if (n > 0 && d[n - 1] == '.')
        d[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        d[i] = (char)tolower((unsigned char)d[i]);
    return d;
}

static bool is_ipv4(const char *s)
{
    struct in_addr a;
    return inet_pton(AF_INET, s, &a) == 1;
}

static bool is_ipv6(const char *s)
{
    struct in6_addr a;
    return inet_pton(AF_INET6, s, &a) == 1;
}

static bool valid_port(const char *s)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 5 || s[n] != '\0')
        return false;
    long v = strtol(s, NULL, 10);
    return v >= 1 && v <= 65535;
}

enum host_kind { HOST_IP, HOST_NAME_OR_IP };

/* Splits "host:port", "[v6]:port", "host" or "[v6]" into HOST (without
 * brackets) and PORT (NULL when there is none). Returns NULL or why not. */
static const char *split_hostport(const char *s, char host[static 256], const char **port)
{
    const char *end;
    if (s[0] == '[') {
        end = strchr(s, ']');
        if (end == NULL)
            return "missing ']' after the IPv6 address";
        s++;
        if (end[1] != '\0' && end[1] != ':')
            return "unexpected text after ']'";
        *port = end[1] == ':' ? end + 2 : NULL;
    } else {
        end = strchr(s, ':');
        *port = end ? end + 1 : NULL;
        end = end ? end : s + strlen(s);
    }
    size_t n = (size_t)(end - s);
    if (n == 0 || n > 255)
        return "missing host";
    memcpy(host, s, n);
    host[n] = '\0';
    return NULL;
}

/* Checks "host:port", "[v6]:port" and, when the port is optional, "host",
 * "[v6]" and a bare v6 address. Returns NULL or why the value is wrong. */
static const char *check_hostport(const char *s, enum host_kind kind, bool need_port)
{
    bool bracketed = s[0] == '[';
    if (!bracketed && strchr(s, ':') != strrchr(s, ':')) {
        if (need_port || !is_ipv6(s))
            return "an IPv6 address must be written in brackets: [ADDRESS]:PORT";
        return NULL;
    }
    char host[256];
    const char *port, *why = split_hostport(s, host, &port);
    if (why != NULL)
        return why;
    if (port == NULL && need_port)
        return "missing ':PORT'";
    if (bracketed && !is_ipv6(host))
        return "not an IPv6 address inside [ ]";
    if (!bracketed && kind == HOST_IP && !is_ipv4(host))
        return "not an IP address";
    if (!bracketed && !is_ipv4(host) && !conf_valid_domain(host))
        return "not a valid host name or IP address";
    if (port != NULL && !valid_port(port))
        return "the port must be a number from 1 to 65535";
    return NULL;
}

/* "ip" or "ip/len", IPv4 or IPv6. */
static const char *check_cidr(const char *s)
{
    char addr[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof addr)
        return "not an IP address";
    memcpy(addr, s, n);
    addr[n] = '\0';
    int max = is_ipv4(addr) ? 32 : is_ipv6(addr) ? 128 : -1;
    if (max < 0)
        return "not an IP address";
    if (slash == NULL)
        return NULL;
    const char *len = slash + 1;
    size_t digits = strspn(len, "0123456789");
    if (digits == 0 || digits > 3 || len[digits] != '\0' || atoi(len) > max)
        return max == 32 ? "the prefix length must be 0 to 32" : "the prefix length must be 0 to 128";
    return NULL;
}

/* A path that the daemon will open for reading later. */
static const char *check_readable(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return strerror(errno);
    struct stat st;
    bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    close(fd);
    return regular ? NULL : "not a regular file";
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    bool slash = n > 0 && dir[n - 1] == '/';
    return conf_xasprintf("%s%s%s", dir, slash ? "" : "/", name);
}

/* ------------------------------------------------------------------------
 * Sections
 */

static void list_check_each(const struct confsec *s, const char *name, const struct strlist *l,
                            enum host_kind kind, bool need_port, const char *form)
{
    for (size_t i = 0; i < l->n; i++) {
        const char *why = check_hostport(l->v[i], kind, need_port);
        if (why != NULL)
            confsec_error(s, name, confsec_item_line(s, name, i), "'%s' is not %s: %s",
                          l->v[i], form, why);
    }
}

static void load_top(struct confsec *s, struct bmx_config *c)
{
    c->hostname = confsec_str(s, "hostname", NULL);
    if (c->hostname != NULL) {
        char *n = normalize_domain(c->hostname);
        if (!conf_valid_domain(n))
            confsec_opt_error(s, "hostname", "'%s' is not a valid host name", c->hostname);
        free(c->hostname);
        c->hostname = n;
    } else if (!confsec_given(s, "hostname")) {
        char buf[HOST_NAME_MAX + 1] = "";
        if (gethostname(buf, sizeof buf) != 0 || buf[0] == '\0')
            confdoc_report(s->doc, 0, "hostname: not set, and gethostname() failed: %s",
                           strerror(errno));
        else
            c->hostname = conf_xstrdup(buf);
    }
    c->spool = confsec_str(s, "spool", DEF_SPOOL);
    c->user = confsec_str(s, "user", NULL);
    if (c->user != NULL && getpwnam(c->user) == NULL)
        confsec_opt_error(s, "user", "no such user '%s'", c->user);

    get_list(s, "listen", def_listen, &c->listen);
    if (c->listen.n == 0)
        confsec_opt_error(s, "listen", "no address to listen on");
    list_check_each(s, "listen", &c->listen, HOST_IP, true, "ADDRESS:PORT or [IPv6]:PORT");
    get_list(s, "resolver", NULL, &c->resolver);
    list_check_each(s, "resolver", &c->resolver, HOST_IP, false, "an IP address with an optional :PORT");

    c->control = confsec_str(s, "control", NULL);
    if (c->control == NULL)
        c->control = path_join(c->spool, "control");
    struct sockaddr_un addr;
    if (strlen(c->control) >= sizeof addr.sun_path)
        confsec_opt_error(s, "control", "path is too long for a UNIX socket (at most %zu bytes)",
                          sizeof addr.sun_path - 1);
}

/* Stops PEM loading from prompting on the terminal for an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* The first error is the cause; later ones are the callers giving up. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/* Whether the failed PEM read was of an encrypted key (no passphrase is
 * given, so that needs its own message). */
static bool key_was_encrypted(void)
{
    unsigned long e;
    while ((e = ERR_get_error()) != 0)
        if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ)
            return true;
    return false;
}

static bool tls_cert_usable(const struct confsec *s, SSL_CTX *ctx, const char *cert)
{
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) == 1)
        return true;
    confsec_opt_error(s, "cert", "'%s' holds no usable PEM certificate (OpenSSL: %s)", cert,
                      ssl_reason());
    ERR_clear_error();
    return false;
}

/* Read separately from the SSL_CTX so that "not a key" and "not this
 * certificate's key" get different messages. */
static EVP_PKEY *tls_read_key(const struct confsec *s, const char *key)
{
    ERR_clear_error();
    FILE *fp = fopen(key, "r");
    EVP_PKEY *pkey = fp ? PEM_read_PrivateKey(fp, NULL, no_passphrase, NULL) : NULL;
    if (fp != NULL)
        fclose(fp);
    if (pkey != NULL)
        return pkey;
    const char *why = ssl_reason();
    if (key_was_encrypted())
        confsec_opt_error(s, "key", "'%s' is encrypted; the daemon needs an unencrypted key", key);
    else
        confsec_opt_error(s, "key", "'%s' holds no usable PEM private key (OpenSSL: %s)", key, why);
    ERR_clear_error();
    return NULL;
}

static void check_tls_files(const struct confsec *s, SSL_CTX *ctx, const char *cert,
                            const char *key)
{
    const char *cert_why = check_readable(cert), *key_why = check_readable(key);
    if (cert_why != NULL)
        confsec_opt_error(s, "cert", "cannot read '%s': %s", cert, cert_why);
    if (key_why != NULL)
        confsec_opt_error(s, "key", "cannot read '%s': %s", key, key_why);
    if (cert_why != NULL || key_why != NULL)
        return;
    bool cert_ok = tls_cert_usable(s, ctx, cert);
    EVP_PKEY *pkey = tls_read_key(s, key);
    if (cert_ok && pkey != NULL
        && (SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1))
        confsec_opt_error(s, "key", "'%s' does not match the certificate in '%s'", key, cert);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
}

/* A throwaway context making the calls the daemon will make, so that what
 * passes here also loads there. */
static void check_tls_openssl(const struct confsec *s, const struct bmx_config *c)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        confdoc_report(s->doc, confsec_line(s), "tls: cannot create an OpenSSL context (%s)",
                       ssl_reason());
        ERR_clear_error();
        return;
    }
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (c->tls.enabled)
        check_tls_files(s, ctx, c->tls.cert, c->tls.key);
    ERR_clear_error();
    if (c->tls.ciphers != NULL && SSL_CTX_set_cipher_list(ctx, c->tls.ciphers) != 1)
        confsec_opt_error(s, "ciphers", "OpenSSL accepts no cipher in '%s'", c->tls.ciphers);
    ERR_clear_error();
    SSL_CTX_free(ctx);
}

static void load_tls(struct confdoc *doc, cfg_t *root, struct bmx_config *c)
{
    struct confsec s = confsec_nth(doc, root, "tls", 0);
    c->tls.cert = confsec_str(&s, "cert", NULL);
    c->tls.key = confsec_str(&s, "key", NULL);
    c->tls.ciphers = confsec_str(&s, "ciphers", NULL);
    c->tls.enabled = c->tls.cert != NULL && c->tls.key != NULL;
    if (c->tls.cert != NULL && c->tls.key == NULL)
        confdoc_report(doc, confsec_line(&s), "tls: 'cert' is set but 'key' is missing");
    if (c->tls.key != NULL && c->tls.cert == NULL)
        confdoc_report(doc, confsec_line(&s), "tls: 'key' is set but 'cert' is missing");
    if (c->tls.ciphers != NULL && c->tls.cert == NULL && c->tls.key == NULL)
        confdoc_report(doc, confsec_opt_line(&s, "ciphers"),
                       "tls: 'ciphers' needs 'cert' and 'key'");
    if (c->tls.enabled || c->tls.ciphers != NULL)
        check_tls_openssl(&s, c);
    confsec_close(&s);
}

static void load_limits(struct confdoc *doc, cfg_t *root, struct bmx_config *c)
{
    struct confsec s = confsec_nth(doc, root, "limits", 0);
    /* A bad value yields the default, which is not 0. */
    c->limits.message_size = confsec_size(&s, "message_size", "50M");
    if (c->limits.message_size == 0) {
        confsec_opt_error(&s, "message_size", "must be larger than 0");
        parse_size("50M", &c->limits.message_size);
    }
    c->limits.recipients = confsec_long(&s, "recipients", 100, 1, 100000);
    c->limits.connections = confsec_long(&s, "connections", 1000, 1, 1000000);
    c->limits.connections_per_ip = confsec_long(&s, "connections_per_ip", 20, 1, 1000000);
    c->limits.command_timeout = confsec_positive_duration(&s, "command_timeout", "5m");
    c->limits.data_timeout = confsec_positive_duration(&s, "data_timeout", "10m");
    c->limits.errors = confsec_long(&s, "errors", 10, 1, 100000);
    confsec_close(&s);
}

static void load_queue(struct confdoc *doc, cfg_t *root, struct bmx_config *c)
{
    struct confsec s = confsec_nth(doc, root, "queue", 0);
    c->queue.lifetime = confsec_positive_duration(&s, "lifetime", "10d");
    c->queue.retry_min = confsec_positive_duration(&s, "retry_min", "1m");
    c->queue.retry_max = confsec_positive_duration(&s, "retry_max", "1h");
    c->queue.delay_warning = confsec_duration(&s, "delay_warning", "0");
    c->queue.concurrency = confsec_long(&s, "concurrency", 10, 1, 1000);
    c->queue.mx_port = (int)confsec_long(&s, "mx_port", 25, 1, 65535);
    if (c->queue.retry_min > c->queue.retry_max && c->queue.retry_max > 0) {
        const char *at = confsec_given(&s, "retry_min") ? "retry_min" : "retry_max";
        confsec_opt_error(&s, at, "retry_min (%s) is longer than retry_max (%s)",
                          confsec_raw(&s, "retry_min", "1m"), confsec_raw(&s, "retry_max", "1h"));
    }
    confsec_close(&s);
}

static const char *const mode_names[] = { "relay", "catchall", NULL };
static const char *const unverified_names[] = { "tempfail", "accept", NULL };
static const char *const tlsout_names[] = { "may", "encrypt", "verify", "fingerprint", NULL };
static const char *const tlsin_names[] = { "none", "starttls", "implicit", NULL };
static char *normalize_fingerprint(const char *v)
{
    char hex[65];
    return conf_sha256_hex(v, true, hex) ? conf_xasprintf("sha256:%s", hex) : NULL;
}

static void load_domain_tls(struct confsec *s, struct bmx_domain *d)
{
    d->tls = (enum tls_mode_out)confsec_enum(s, "tls", tlsout_names, TLSOUT_MAY);
    const char *fp = confsec_raw(s, "fingerprint", NULL);
    if (fp != NULL) {
        d->fingerprint = normalize_fingerprint(fp);
        if (d->fingerprint == NULL)
            confsec_opt_error(s, "fingerprint",
                              "'%s' is not sha256: followed by 64 hex digits", fp);
        if (d->tls != TLSOUT_FINGERPRINT)
            confsec_opt_error(s, "fingerprint", "only used with tls = \"fingerprint\"");
    }
    if (d->tls == TLSOUT_FINGERPRINT && fp == NULL)
        confsec_opt_error(s, "tls", "\"fingerprint\" needs a 'fingerprint' option");
}

/* A catch-all domain's mailbox must be defined (mailboxes are loaded
 * first); it is stored in the mailbox's own spelling, so users may strcmp. */
static void resolve_mailbox(struct confsec *s, struct bmx_domain *d, const struct bmx_config *c)
{
    const struct bmx_mailbox *m = config_find_mailbox(c, d->mailbox);
    if (m == NULL) {
        confsec_opt_error(s, "mailbox", "no mailbox \"%s\" is defined", d->mailbox);
        return;
    }
    free(d->mailbox);
    d->mailbox = conf_xstrdup(m->name);
}

/* What only makes sense for one of the two modes. */
static void check_domain_mode(struct confsec *s, struct bmx_domain *d, const struct bmx_config *c)
{
    if (d->mode == MODE_RELAY && d->mailbox != NULL)
        confsec_opt_error(s, "mailbox", "only catch-all domains have a mailbox (mode is relay)");
    if (d->mode != MODE_CATCHALL)
        return;
    if (d->mailbox == NULL && !confsec_given(s, "mailbox"))
        confdoc_report(s->doc, confsec_line(s), "%s: mode catchall needs a 'mailbox'", s->desc);
    if (d->mailbox != NULL)
        resolve_mailbox(s, d, c);
    if (d->primary.n > 0)
        confsec_opt_error(s, "primary",
                          "a catch-all domain keeps its mail in a mailbox and has no primary");
    if (d->verify)
        confsec_opt_error(s, "verify",
                          "a catch-all domain has no primary to verify recipients with");
}

static void load_domain(struct confsec *s, struct bmx_domain *d, const struct bmx_config *c)
{
    d->line = confsec_line(s);
    d->name = normalize_domain(cfg_title(s->cfg));
    if (!conf_valid_domain(d->name))
        confdoc_report(s->doc, d->line, "%s: not a valid domain name", s->desc);
    d->mode = (enum domain_mode)confsec_enum(s, "mode", mode_names, MODE_RELAY);
    get_list(s, "primary", NULL, &d->primary);
    list_check_each(s, "primary", &d->primary, HOST_NAME_OR_IP, false,
                    "HOST, HOST:PORT or [IPv6]:PORT");
    d->recipients = confsec_str(s, "recipients", NULL);
    const char *why;
    if (d->recipients != NULL && (why = check_readable(d->recipients)) != NULL)
        confsec_opt_error(s, "recipients", "cannot read '%s': %s", d->recipients, why);
    d->verify = confsec_bool(s, "verify", false);
    d->verify_ttl = confsec_positive_duration(s, "verify_ttl", "31d");
    d->unverified = (enum unverified_policy)confsec_enum(s, "unverified", unverified_names,
                                                     UNVERIFIED_TEMPFAIL);
    load_domain_tls(s, d);
    d->lifetime = confsec_duration(s, "lifetime", "0");
    d->subdomains = confsec_bool(s, "subdomains", false);
    d->mailbox = confsec_str(s, "mailbox", NULL);
    check_domain_mode(s, d, c);
}

/* A login name and a directory name. */
static bool valid_mailbox_name(const char *n)
{
    if (n[0] == '\0' || n[0] == '.' || n[0] == '-' || strlen(n) > 64)
        return false;
    return strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@+")
           == strlen(n);
}

static void load_mailbox(struct confsec *s, struct bmx_mailbox *m, const char *spool)
{
    m->line = confsec_line(s);
    m->name = conf_xstrdup(cfg_title(s->cfg));
    if (!valid_mailbox_name(m->name))
        confdoc_report(s->doc, m->line, "%s: a mailbox name may only contain letters, digits "
                       "and . _ - @ + (and not start with . or -)", s->desc);
    m->password = confsec_str(s, "password", NULL);
    /* A plain-text password here would be compared against crypt(3)
     * output and never match; catch it now. */
    if (m->password != NULL && m->password[0] != '$')
        confsec_opt_error(s, "password", "must be a crypt(3) hash such as $y$... "
                          "(mkpasswd -m yescrypt), not plain text");
    m->maildir = confsec_str(s, "maildir", NULL);
    if (m->maildir == NULL) {
        char *dir = path_join(spool, "catchall");
        m->maildir = path_join(dir, m->name);
        free(dir);
    }
    m->quota = confsec_size(s, "quota", "0");
}

static void load_listener(struct confdoc *doc, cfg_t *root, const char *name,
                          struct bmx_listener_set *ls)
{
    struct confsec s = confsec_nth(doc, root, name, 0);
    ls->enabled = confsec_present(&s);
    if (ls->enabled) {
        get_list(&s, "listen", NULL, &ls->listen);
        if (ls->listen.n == 0)
            confsec_opt_error(&s, "listen", "no address to listen on");
        list_check_each(&s, "listen", &ls->listen, HOST_IP, true, "ADDRESS:PORT or [IPv6]:PORT");
        ls->tls = (enum tls_mode_in)confsec_enum(&s, "tls", tlsin_names, TLSIN_IMPLICIT);
    }
    confsec_close(&s);
}

static void load_etrn(struct confdoc *doc, cfg_t *root, struct bmx_config *c)
{
    struct confsec s = confsec_nth(doc, root, "etrn", 0);
    c->etrn.enabled = confsec_present(&s);
    if (c->etrn.enabled) {
        get_list(&s, "allow", NULL, &c->etrn.allow);
        if (c->etrn.allow.n == 0)
            confsec_opt_error(&s, "allow", "no client is allowed to use ETRN");
        for (size_t i = 0; i < c->etrn.allow.n; i++) {
            const char *why = check_cidr(c->etrn.allow.v[i]);
            if (why != NULL)
                confsec_error(&s, "allow", confsec_item_line(&s, "allow", i),
                              "'%s' is not an IP address or ADDRESS/LENGTH: %s",
                              c->etrn.allow.v[i], why);
        }
    }
    confsec_close(&s);
}

static void load_domains(struct confdoc *doc, cfg_t *root, struct bmx_config *c)
{
    size_t n = cfg_size(root, "domain");
    c->domains = conf_xcalloc(n, sizeof *c->domains);
    c->ndomains = n;
    for (size_t i = 0; i < n; i++) {
        struct confsec s = confsec_nth(doc, root, "domain", (unsigned)i);
        load_domain(&s, &c->domains[i], c);
        confsec_close(&s);
    }
}

static void load_mailboxes(struct confdoc *doc, cfg_t *root, struct bmx_config *c)
{
    size_t n = cfg_size(root, "mailbox");
    c->mailboxes = conf_xcalloc(n, sizeof *c->mailboxes);
    c->nmailboxes = n;
    for (size_t i = 0; i < n; i++) {
        struct confsec s = confsec_nth(doc, root, "mailbox", (unsigned)i);
        load_mailbox(&s, &c->mailboxes[i], c->spool);
        confsec_close(&s);
    }
}

/* ------------------------------------------------------------------------
 * Checks across sections
 */

static void check_listener(struct confdoc *doc, cfg_t *root, const struct bmx_config *c,
                           const char *name, const struct bmx_listener_set *ls)
{
    if (!ls->enabled)
        return;
    struct confsec s = confsec_nth(doc, root, name, 0);
    if (c->nmailboxes == 0)
        confdoc_report(doc, confsec_line(&s),
                       "%s: there is no mailbox to serve (define a mailbox section)", name);
    if (ls->tls != TLSIN_NONE && !c->tls.enabled)
        confdoc_report(doc, confsec_opt_line(&s, "tls"),
                       "%s: tls = \"%s\" needs the tls section's cert and key (or tls = \"none\")",
                       name, tlsin_names[ls->tls]);
    confsec_close(&s);
}

/* Without a password nobody can log in to collect the mail. */
static void check_passwords(struct confdoc *doc, const struct bmx_config *c)
{
    if (!c->pop3.enabled && !c->imap.enabled)
        return;
    for (size_t i = 0; i < c->nmailboxes; i++)
        if (c->mailboxes[i].password == NULL)
            confdoc_report(doc, c->mailboxes[i].line,
                           "mailbox \"%s\": no 'password', so it cannot log in over POP3 or IMAP",
                           c->mailboxes[i].name);
}

/* Reports the J-th address of SECTION's listen list if it already occurs
 * among the N addresses in SEEN. */
static void check_clash(struct confdoc *doc, cfg_t *root, const char *section,
                        const struct strlist *l, size_t j, const char **seen, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(seen[i], l->v[j]) != 0)
            continue;
        struct confsec s = section ? confsec_nth(doc, root, section, 0) : confsec_top(doc, root);
        int line = j < confsec_nitems(&s, "listen") ? confsec_item_line(&s, "listen", j) : 0;
        confdoc_report(doc, line, "%s%slisten: '%s' is used twice", section ? section : "",
                       section ? ": " : "", l->v[j]);
        confsec_close(&s);
        return;
    }
}

/* Two listeners on one address would fail at bind time; say so now. */
static void check_listen_clash(struct confdoc *doc, cfg_t *root, const struct bmx_config *c)
{
    const struct strlist *lists[] = { &c->listen, &c->pop3.listen, &c->imap.listen };
    const char *sections[] = { NULL, "pop3", "imap" };
    size_t total = c->listen.n + c->pop3.listen.n + c->imap.listen.n, n = 0;
    const char **seen = conf_xcalloc(total, sizeof *seen);
    for (size_t k = 0; k < 3; k++) {
        for (size_t j = 0; j < lists[k]->n; j++) {
            check_clash(doc, root, sections[k], lists[k], j, seen, n);
            seen[n++] = lists[k]->v[j];
        }
    }
    free(seen);
}

/* ------------------------------------------------------------------------
 * Public interface
 */

static struct bmx_config *convert(struct confdoc *doc, cfg_t *root)
{
    struct bmx_config *c = conf_xcalloc(1, sizeof *c);
    c->file = conf_xstrdup(confdoc_file(doc));
    struct confsec top = confsec_top(doc, root);
    load_top(&top, c);
    confsec_close(&top);
    load_tls(doc, root, c);
    load_limits(doc, root, c);
    load_queue(doc, root, c);
    load_mailboxes(doc, root, c);
    load_domains(doc, root, c);
    load_listener(doc, root, "pop3", &c->pop3);
    load_listener(doc, root, "imap", &c->imap);
    load_etrn(doc, root, c);
    check_listener(doc, root, c, "pop3", &c->pop3);
    check_listener(doc, root, c, "imap", &c->imap);
    check_passwords(doc, c);
    check_listen_clash(doc, root, c);
    return c;
}

struct bmx_config *config_load(const char *file, FILE *errs)
{
    cfg_t *root;
    struct confdoc *doc = confdoc_parse(file, &schema, &root);
    struct bmx_config *c = root != NULL ? convert(doc, root) : NULL;
    if (confdoc_finish(doc, errs) > 0) {
        config_free(c);
        c = NULL;
    }
    confdoc_free(doc, root);
    return c;
}

static void free_domain(struct bmx_domain *d)
{
    free(d->name);
    strlist_free(&d->primary);
    free(d->recipients);
    free(d->fingerprint);
    free(d->mailbox);
}

static void free_mailbox(struct bmx_mailbox *m)
{
    free(m->name);
    free(m->password);
    free(m->maildir);
}

void config_free(struct bmx_config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->ndomains; i++)
        free_domain(&c->domains[i]);
    for (size_t i = 0; i < c->nmailboxes; i++)
        free_mailbox(&c->mailboxes[i]);
    free(c->domains);
    free(c->mailboxes);
    strlist_free(&c->listen);
    strlist_free(&c->resolver);
    strlist_free(&c->pop3.listen);
    strlist_free(&c->imap.listen);
    strlist_free(&c->etrn.allow);
    free(c->tls.cert);
    free(c->tls.key);
    free(c->tls.ciphers);
    free(c->file);
    free(c->hostname);
    free(c->spool);
    free(c->user);
    free(c->control);
    free(c);
}

static const struct bmx_domain *find_exact(const struct bmx_config *c, const char *name)
{
    for (size_t i = 0; i < c->ndomains; i++)
        if (strcmp(c->domains[i].name, name) == 0)
            return &c->domains[i];
    return NULL;
}

const struct bmx_domain *config_find_domain(const struct bmx_config *c, const char *domain)
{
    if (c == NULL || domain == NULL)
        return NULL;
    char name[256];
    size_t n = strlen(domain);
    if (n > 0 && domain[n - 1] == '.')
        n--;
    if (n == 0 || n >= sizeof name)
        return NULL;
    for (size_t i = 0; i < n; i++)
        name[i] = (char)tolower((unsigned char)domain[i]);
    name[n] = '\0';
    const struct bmx_domain *d = find_exact(c, name);
    if (d != NULL)
        return d;
    /* The nearest parent that covers its subdomains. */
    for (const char *p = strchr(name, '.'); p != NULL; p = strchr(p + 1, '.')) {
        d = find_exact(c, p + 1);
        if (d != NULL && d->subdomains)
            return d;
    }
    return NULL;
}

const struct bmx_mailbox *config_find_mailbox(const struct bmx_config *c, const char *name)
{
    if (c == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < c->nmailboxes; i++)
        if (strcasecmp(c->mailboxes[i].name, name) == 0)
            return &c->mailboxes[i];
    return NULL;
}
