/* backupmx.conf: the operator's contract (see backupmx.conf(5)). Parsed with
 * libconfuse into plain structs; nothing else in the daemon touches libconfuse. */
#ifndef BMX_CONFIG_H
#define BMX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum domain_mode { MODE_RELAY, MODE_CATCHALL };
enum unverified_policy { UNVERIFIED_TEMPFAIL, UNVERIFIED_ACCEPT };
enum tls_mode_out { TLSOUT_MAY, TLSOUT_ENCRYPT, TLSOUT_VERIFY, TLSOUT_FINGERPRINT };
enum tls_mode_in { TLSIN_NONE, TLSIN_STARTTLS, TLSIN_IMPLICIT };

struct strlist {
    char **v;
    size_t n;
};

struct bmx_domain {
    char *name;                 /* lower case, no trailing dot */
    enum domain_mode mode;
    struct strlist primary;     /* "host[:port]", in order; empty = MX lookup */
    char *recipients;           /* path of the valid-recipient list, or NULL */
    bool verify;
    int64_t verify_ttl;         /* seconds, default 31d */
    enum unverified_policy unverified;
    enum tls_mode_out tls;
    char *fingerprint;          /* "sha256:..." with TLSOUT_FINGERPRINT */
    int64_t lifetime;           /* seconds; 0 = queue.lifetime */
    bool subdomains;
    char *mailbox;              /* catch-all: name of a mailbox section */
    int line;                   /* where the section starts, for messages */
};

struct bmx_mailbox {
    char *name;
    char *password;             /* crypt(3) hash */
    char *maildir;              /* default spool/catchall/NAME */
    uint64_t quota;             /* bytes, 0 = none */
    int line;
};

struct bmx_listener_set {
    bool enabled;               /* the section was present */
    struct strlist listen;
    enum tls_mode_in tls;
};

struct bmx_config {
    char *file;
    char *hostname;             /* default: gethostname() */
    char *spool;
    char *user;                 /* NULL = do not change user */
    char *control;              /* default spool/control */
    struct strlist listen;      /* "addr:port", "[v6]:port" */
    struct strlist resolver;    /* "ip[:port]"; empty = /etc/resolv.conf */

    struct {
        bool enabled;           /* cert and key given */
        char *cert, *key, *ciphers;
    } tls;

    struct {
        uint64_t message_size;  /* 50M */
        long recipients;        /* 100 */
        long connections;       /* 1000 */
        long connections_per_ip; /* 20 */
        int64_t command_timeout; /* 5m */
        int64_t data_timeout;   /* 10m */
        long errors;            /* 10 */
    } limits;

    struct {
        int64_t lifetime;       /* 10d */
        int64_t retry_min;      /* 1m */
        int64_t retry_max;      /* 1h */
        int64_t delay_warning;  /* 0 = off */
        long concurrency;       /* 10 */
        int mx_port;            /* 25 */
    } queue;

    struct bmx_domain *domains;
    size_t ndomains;
    struct bmx_mailbox *mailboxes;
    size_t nmailboxes;

    struct bmx_listener_set pop3, imap;

    struct {
        bool enabled;
        struct strlist allow;   /* "ip", "ip/len", v4 or v6 */
    } etrn;
};

/* Parses and checks FILE. Every problem is printed to errs as
 * "FILE:LINE: message" (one per line). Returns the config, or NULL when
 * there was at least one problem. */
struct bmx_config *config_load(const char *file, FILE *errs);
void config_free(struct bmx_config *cfg);

/* The domain entry that covers DOMAIN (any case, trailing dot allowed;
 * a parent with subdomains = true covers its subdomains), or NULL. */
const struct bmx_domain *config_find_domain(const struct bmx_config *cfg,
                                            const char *domain);
const struct bmx_mailbox *config_find_mailbox(const struct bmx_config *cfg,
                                              const char *name);

#endif
