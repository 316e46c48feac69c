/* fetchd.conf loader: schema, defaults and value checks. The file is read
 * by conf_load.c, which gives every problem its FILE:LINE; this file turns
 * the values into struct fd_config and reports what is wrong with them,
 * all problems at once. */
#include "fetchd_conf.h"
#include "conf_load.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define DEF_STATE "/var/lib/fetchd"

static cfg_opt_t account_opts[] = {
    CFG_STR("server", NULL, CFGF_NONE),
    CFG_STR("protocol", NULL, CFGF_NONE),
    CFG_STR("port", NULL, CFGF_NONE),
    CFG_STR("tls", NULL, CFGF_NONE),
    CFG_STR("verify", NULL, CFGF_NONE),
    CFG_STR("ca", NULL, CFGF_NONE),
    CFG_STR("fingerprint", NULL, CFGF_NONE),
    CFG_STR("user", NULL, CFGF_NONE),
    CFG_STR("password", NULL, CFGF_NONE),
    CFG_STR("password_file", NULL, CFGF_NONE),
    CFG_STR("mailbox", NULL, CFGF_NONE),
    CFG_STR("deliver", NULL, CFGF_NONE),
    CFG_STR("envelope", NULL, CFGF_NONE),
    CFG_STR_LIST("localdomains", NULL, CFGF_NONE),
    CFG_STR("postmaster", NULL, CFGF_NONE),
    CFG_STR("keep", NULL, CFGF_NONE),
    CFG_STR("fetch_limit", NULL, CFGF_NONE),
    CFG_STR("size_limit", NULL, CFGF_NONE),
    CFG_STR("on_reject", NULL, CFGF_NONE),
    CFG_STR("timeout", NULL, CFGF_NONE),
    CFG_STR("batch_count", NULL, CFGF_NONE),
    CFG_STR("batch_size", NULL, CFGF_NONE),
    CFG_STR("idle", NULL, CFGF_NONE),
    CFG_STR("mda_concurrency", NULL, CFGF_NONE),
    CFG_END()
};

static cfg_opt_t top_opts[] = {
    CFG_STR("state", NULL, CFGF_NONE),
    CFG_STR("interval", NULL, CFGF_NONE),
    CFG_SEC("account", account_opts, CFGF_MULTI | CFGF_TITLE),
    CFG_END()
};

static const char *const pair_opts[] = { "account|map", NULL };

static const char *const proto_names[] = { "imap", "pop3", NULL };
static const char *const tls_names[] = { "implicit", "starttls", "none", NULL };
static const char *const reject_names[] = { "keep", "bounce", "delete", NULL };

static _Noreturn void out_of_memory(void)
{
    fputs("fetchd: out of memory while loading the configuration\n", stderr);
    abort();
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (p == NULL)
        out_of_memory();
    return p;
}

static char *xstrdup(const char *s)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        out_of_memory();
    return d;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

/* ------------------------------------------------------------------------
 * Syntax of names
 */

static bool is_ip(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

static bool valid_host(const char *s)
{
    return is_ip(s) || conf_valid_domain(s);
}

static int parse_port(const char *s)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 5 || s[n] != '\0')
        return -1;
    long v = strtol(s, NULL, 10);
    return v >= 1 && v <= 65535 ? (int)v : -1;
}

/* An RFC 5322 field name: printable ASCII except ':'. */
static bool valid_field_name(const char *s)
{
    if (*s == '\0' || strlen(s) > 76)
        return false;
    for (; *s; s++)
        if (*s <= 32 || *s >= 127 || *s == ':')
            return false;
    return true;
}

/* A recipient as written in map values and postmaster: a local user name
 * or an address, no spaces, controls, brackets or leading '-'. */
static bool valid_recipient(const char *s)
{
    if (*s == '\0' || *s == '-' || strlen(s) > 254)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 32 || *s == 127 || strchr("<>()[],;\"\\", *s))
            return false;
    return true;
}

/* ------------------------------------------------------------------------
 * mda command lines: words without a shell
 */

void fd_free_argv(char **argv)
{
    for (size_t i = 0; argv != NULL && argv[i] != NULL; i++)
        free(argv[i]);
    free(argv);
}

char **fd_split_command(const char *cmd, size_t *argc, const char **why)
{
    size_t n = 0, len = strlen(cmd);
    char **argv = xcalloc(len / 2 + 2, sizeof *argv);
    char *word = xcalloc(len + 1, 1);
    const char *p = cmd;
    *why = NULL;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        size_t w = 0;
        while (*p != '\0' && *p != ' ' && *p != '\t') {
            if (*p == '\'') {
                const char *e = strchr(p + 1, '\'');
                if (e == NULL) {
                    *why = "missing closing '";
                    goto fail;
                }
                memcpy(word + w, p + 1, (size_t)(e - p - 1));
                w += (size_t)(e - p - 1);
                p = e + 1;
            } else if (*p == '"') {
                p++;
                while (*p != '"') {
                    if (*p == '\0') {
                        *why = "missing closing \"";
                        goto fail;
                    }
                    if (*p == '\\' && (p[1] == '"' || p[1] == '\\'))
                        p++;
                    word[w++] = *p++;
                }
                p++;
            } else if (*p == '\\' && p[1] != '\0') {
                word[w++] = p[1];
                p += 2;
            } else {
                word[w++] = *p++;
            }
        }
        word[w] = '\0';
        argv[n++] = xstrdup(word);
    }
    free(word);
    if (n == 0) {
        *why = "the command is empty";
        fd_free_argv(argv);
        return NULL;
    }
    *argc = n;
    return argv;
fail:
    free(word);
    fd_free_argv(argv);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Delivery targets
 */

/* "HOST:PORT", "[v6]:PORT", "HOST" (port DEF_PORT). Returns NULL or why not. */
static const char *parse_hostport(const char *s, int def_port, char **host, int *port)
{
    const char *hend, *pstr = NULL;
    const char *h = s;
    if (*s == '[') {
        hend = strchr(s, ']');
        if (hend == NULL)
            return "missing ']' after the IPv6 address";
        h = s + 1;
        if (hend[1] == ':')
            pstr = hend + 2;
        else if (hend[1] != '\0')
            return "unexpected text after ']'";
    } else {
        hend = strchr(s, ':');
        if (hend != NULL && strchr(hend + 1, ':') != NULL)
            return "an IPv6 address must be written in brackets: [ADDRESS]:PORT";
        if (hend != NULL)
            pstr = hend + 1;
        else
            hend = s + strlen(s);
    }
    size_t n = (size_t)(hend - h);
    if (n == 0 || n > 255)
        return "missing host";
    char buf[256];
    memcpy(buf, h, n);
    buf[n] = '\0';
    if (*s == '[' ? !is_ip(buf) || strchr(buf, ':') == NULL : !valid_host(buf))
        return "not a valid host name or IP address";
    *port = def_port;
    if (pstr != NULL && (*port = parse_port(pstr)) < 0)
        return "the port must be a number from 1 to 65535";
    *host = xstrdup(buf);
    return NULL;
}

static void load_target(const struct confsec *s, struct fd_target *t)
{
    const char *v = confsec_raw(s, "deliver", "smtp:127.0.0.1:25");
    int line = confsec_opt_line(s, "deliver");
    const char *why = NULL;
    t->spec = xstrdup(v);
    if (strncasecmp(v, "smtp:", 5) == 0) {
        t->kind = DELIVER_SMTP;
        why = parse_hostport(v + 5, 25, &t->host, &t->port);
    } else if (strncasecmp(v, "lmtp:", 5) == 0) {
        t->kind = DELIVER_LMTP;
        if (v[5] == '/') {
            struct sockaddr_un sun;
            if (strlen(v + 5) >= sizeof sun.sun_path)
                why = "the socket path is too long";
            else
                t->path = xstrdup(v + 5);
        } else {
            why = parse_hostport(v + 5, 24, &t->host, &t->port);
        }
    } else if (strncasecmp(v, "mda:", 4) == 0) {
        t->kind = DELIVER_MDA;
        t->argv = fd_split_command(v + 4, &t->argc, &why);
        if (t->argv != NULL && strchr(t->argv[0], '/') != NULL && access(t->argv[0], X_OK) != 0)
            confsec_error(s, "deliver", line, "cannot run '%s': %s", t->argv[0],
                          strerror(errno));
    } else {
        confsec_error(s, "deliver", line,
                      "'%s' is not smtp:HOST:PORT, lmtp:/PATH, lmtp:HOST:PORT or mda:COMMAND", v);
        return;
    }
    if (why != NULL)
        confsec_error(s, "deliver", line, "'%s': %s", v, why);
}

/* ------------------------------------------------------------------------
 * Accounts
 */

/* The first line of FILE, which must not be readable by everyone. */
static char *read_password_file(const struct confsec *s, const char *file)
{
    int line = confsec_opt_line(s, "password_file");
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        confsec_error(s, "password_file", line, "cannot open '%s': %s", file, strerror(errno));
        return NULL;
    }
    struct stat st;
    char buf[1024];
    ssize_t n = -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        confsec_error(s, "password_file", line, "'%s' is not a regular file", file);
    else if (st.st_mode & S_IROTH)
        confsec_error(s, "password_file", line,
                      "'%s' is readable by everyone (chmod o-r it)", file);
    else if ((n = read(fd, buf, sizeof buf - 1)) < 0)
        confsec_error(s, "password_file", line, "cannot read '%s': %s", file, strerror(errno));
    close(fd);
    if (n < 0)
        return NULL;
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (buf[0] == '\0') {
        confsec_error(s, "password_file", line, "'%s' is empty", file);
        return NULL;
    }
    char *pw = xstrdup(buf);
    explicit_bzero(buf, sizeof buf);
    return pw;
}

static void load_password(const struct confsec *s, struct fd_account *a)
{
    bool has_pw = confsec_given(s, "password"), has_file = confsec_given(s, "password_file");
    if (has_pw && has_file) {
        confsec_error(s, "password_file", confsec_opt_line(s, "password_file"),
                      "give either password or password_file, not both");
        return;
    }
    if (has_file) {
        char *file = confsec_str(s, "password_file", NULL);
        if (file != NULL)
            a->password = read_password_file(s, file);
        free(file);
        return;
    }
    a->password = confsec_str(s, "password", NULL);
    if (a->password == NULL && !has_pw)
        confsec_error(s, "password", confsec_line(s), "missing (or password_file)");
}

static char *normalize_fingerprint(const char *v)
{
    char hex[65];
    return conf_sha256_hex(v, false, hex) ? xstrdup(hex) : NULL;
}

static void load_tls(const struct confsec *s, struct fd_account *a)
{
    a->tls = confsec_enum(s, "tls", tls_names, FTLS_IMPLICIT);
    a->verify = confsec_bool(s, "verify", true);
    a->ca = confsec_str(s, "ca", NULL);
    if (a->ca != NULL && access(a->ca, R_OK) != 0)
        confsec_error(s, "ca", confsec_opt_line(s, "ca"), "cannot read '%s': %s", a->ca,
                      strerror(errno));
    const char *fp = confsec_raw(s, "fingerprint", NULL);
    if (fp != NULL && (a->fingerprint = normalize_fingerprint(fp)) == NULL)
        confsec_error(s, "fingerprint", confsec_opt_line(s, "fingerprint"),
                      "expected sha256: and 64 hex digits (colons allowed), got '%s'", fp);
    if (a->tls == FTLS_NONE && (a->ca != NULL || a->fingerprint != NULL))
        confsec_error(s, "tls", confsec_opt_line(s, "tls"),
                      "\"none\" sends the password in clear text; ca and fingerprint need TLS");
}

static void load_port(const struct confsec *s, struct fd_account *a)
{
    static const int defaults[2][3] = { { 993, 143, 143 }, { 995, 110, 110 } };
    a->port = defaults[a->proto][a->tls];
    const char *v = confsec_raw(s, "port", NULL);
    if (v != NULL && (a->port = parse_port(v)) < 0) {
        confsec_error(s, "port", confsec_opt_line(s, "port"),
                      "must be a number from 1 to 65535, not '%s'", v);
        a->port = defaults[a->proto][a->tls];
    }
}

static void load_routing(const struct confsec *s, struct fd_account *a)
{
    a->envelope = confsec_str(s, "envelope", "X-Original-To");
    if (a->envelope != NULL && !valid_field_name(a->envelope))
        confsec_error(s, "envelope", confsec_opt_line(s, "envelope"),
                      "'%s' is not a header field name", a->envelope);
    unsigned n = confsec_list_size(s, "localdomains");
    a->localdomains = xcalloc(n, sizeof *a->localdomains);
    for (unsigned i = 0; i < n; i++) {
        char *d = xstrdup(confsec_list_item(s, "localdomains", i));
        lower(d);
        size_t len = strlen(d);
        if (len > 0 && d[len - 1] == '.')
            d[len - 1] = '\0';
        if (!conf_valid_domain(d))
            confsec_error(s, "localdomains", confsec_item_line(s, "localdomains", i),
                          "'%s' is not a domain name", d);
        a->localdomains[a->nlocaldomains++] = d;
    }
    size_t m = confsec_npairs(s, "map");
    a->maps = xcalloc(m, sizeof *a->maps);
    for (size_t i = 0; i < m; i++) {
        const char *from = confsec_pair_key(s, "map", i), *to = confsec_pair_value(s, "map", i);
        int line = confsec_pair_line(s, "map", i);
        if (strchr(from, '@') == NULL || !valid_recipient(from))
            confsec_error(s, "map", line, "'%s' is not an address (local@domain)", from);
        if (!valid_recipient(to))
            confsec_error(s, "map", line, "'%s' is not a user name or address", to);
        a->maps[a->nmaps].from = xstrdup(from);
        lower(a->maps[a->nmaps].from);
        a->maps[a->nmaps++].to = xstrdup(to);
    }
    a->postmaster = confsec_str(s, "postmaster", "postmaster");
    if (a->postmaster != NULL && !valid_recipient(a->postmaster))
        confsec_error(s, "postmaster", confsec_opt_line(s, "postmaster"),
                      "'%s' is not a user name or address", a->postmaster);
}

static void load_limits(const struct confsec *s, struct fd_account *a)
{
    a->keep = confsec_bool(s, "keep", false);
    a->fetch_limit = confsec_long(s, "fetch_limit", 0, 0, 1000000000L);
    a->size_limit = confsec_size(s, "size_limit", "0");
    a->on_reject = confsec_enum(s, "on_reject", reject_names, REJECT_KEEP);
    a->timeout = confsec_duration(s, "timeout", "60s");
    if (a->timeout == 0) {
        confsec_error(s, "timeout", confsec_opt_line(s, "timeout"), "must be longer than 0");
        a->timeout = 60;
    }
    a->batch_count = confsec_long(s, "batch_count", 100, 1, 10000);
    a->batch_size = confsec_size(s, "batch_size", "16M");
    if (a->batch_size == 0) {
        confsec_error(s, "batch_size", confsec_opt_line(s, "batch_size"), "must be more than 0");
        a->batch_size = 16u << 20;
    }
    a->idle = confsec_bool(s, "idle", true);
    /* 1 by default: with N programs at once, a crash can deliver N
     * messages a second time instead of one (fetchd(8)). */
    a->mda_concurrency = confsec_long(s, "mda_concurrency", 1, 1, 64);
    if (a->on_reject == REJECT_BOUNCE && a->deliver.kind == DELIVER_MDA)
        confsec_error(s, "on_reject", confsec_opt_line(s, "on_reject"),
                      "\"bounce\" sends the bounce through deliver, which must be smtp: or lmtp:");
}

static void load_account(struct confsec *s, struct fd_account *a)
{
    a->name = xstrdup(cfg_title(s->cfg));
    a->line = confsec_line(s);
    a->server = confsec_str(s, "server", NULL);
    if (a->server == NULL && !confsec_given(s, "server"))
        confsec_error(s, "server", confsec_line(s), "missing: the POP3 or IMAP server's name");
    else if (a->server != NULL && !valid_host(a->server))
        confsec_error(s, "server", confsec_opt_line(s, "server"),
                      "'%s' is not a host name or IP address", a->server);
    a->proto = confsec_enum(s, "protocol", proto_names, PROTO_IMAP);
    load_tls(s, a);
    load_port(s, a);
    a->user = confsec_str(s, "user", NULL);
    if (a->user == NULL && !confsec_given(s, "user"))
        confsec_error(s, "user", confsec_line(s), "missing: the login name");
    load_password(s, a);
    a->mailbox = confsec_str(s, "mailbox", "INBOX");
    if (a->proto == PROTO_POP3 && confsec_given(s, "mailbox"))
        confsec_error(s, "mailbox", confsec_opt_line(s, "mailbox"),
                      "only for protocol = \"imap\" (POP3 has one mailbox)");
    load_target(s, &a->deliver);
    load_routing(s, a);
    load_limits(s, a);
}

/* ------------------------------------------------------------------------
 * Public interface
 */

static struct fd_config *convert(struct confdoc *doc, cfg_t *root)
{
    struct fd_config *c = xcalloc(1, sizeof *c);
    c->file = xstrdup(confdoc_file(doc));
    struct confsec top = confsec_top(doc, root);
    c->state = confsec_str(&top, "state", DEF_STATE);
    c->interval = confsec_duration(&top, "interval", "5m");
    if (c->interval == 0) {
        confsec_error(&top, "interval", confsec_opt_line(&top, "interval"),
                      "must be longer than 0");
        c->interval = 300;
    }
    confsec_close(&top);
    unsigned n = cfg_size(root, "account");
    if (n == 0)
        confdoc_report(doc, 0, "no account section: nothing to fetch");
    c->accounts = xcalloc(n, sizeof *c->accounts);
    for (unsigned i = 0; i < n; i++) {
        struct confsec s = confsec_nth(doc, root, "account", i);
        load_account(&s, &c->accounts[c->naccounts++]);
        confsec_close(&s);
    }
    return c;
}

struct fd_config *fd_config_load(const char *file, FILE *errs)
{
    cfg_t *root = NULL;
    struct confdoc *doc = confdoc_load(file, top_opts, pair_opts, &root);
    struct fd_config *c = root != NULL ? convert(doc, root) : NULL;
    if (confdoc_finish(doc, errs) > 0) {
        fd_config_free(c);
        c = NULL;
    }
    confdoc_free(doc, root);
    return c;
}

static void free_account(struct fd_account *a)
{
    free(a->name);
    free(a->server);
    free(a->ca);
    free(a->fingerprint);
    free(a->user);
    if (a->password != NULL)
        explicit_bzero(a->password, strlen(a->password));
    free(a->password);
    free(a->mailbox);
    free(a->deliver.host);
    free(a->deliver.path);
    free(a->deliver.spec);
    fd_free_argv(a->deliver.argv);
    free(a->envelope);
    for (size_t i = 0; i < a->nlocaldomains; i++)
        free(a->localdomains[i]);
    free(a->localdomains);
    for (size_t i = 0; i < a->nmaps; i++) {
        free(a->maps[i].from);
        free(a->maps[i].to);
    }
    free(a->maps);
    free(a->postmaster);
}

void fd_config_free(struct fd_config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->naccounts; i++)
        free_account(&c->accounts[i]);
    free(c->accounts);
    free(c->file);
    free(c->state);
    free(c);
}
