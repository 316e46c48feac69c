/* fetchd.conf: the operator's contract (see fetchd.conf(5) and DESIGN.md,
 * "fetchd configuration"), parsed into plain structs. */
#ifndef FETCHD_CONF_H
#define FETCHD_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum fd_proto { PROTO_IMAP, PROTO_POP3 };
enum fd_tls { FTLS_IMPLICIT, FTLS_STARTTLS, FTLS_NONE };
enum fd_reject { REJECT_KEEP, REJECT_BOUNCE, REJECT_DELETE };
enum fd_deliver { DELIVER_SMTP, DELIVER_LMTP, DELIVER_MDA };

struct fd_map {
    char *from;                 /* lower case address */
    char *to;
};

struct fd_target {
    enum fd_deliver kind;
    char *host;                 /* smtp/lmtp over TCP: host (no brackets) */
    int port;
    char *path;                 /* lmtp over a UNIX socket */
    char **argv;                /* mda: the command split into words */
    size_t argc;
    char *spec;                 /* as written, for log lines */
};

struct fd_account {
    char *name;
    int line;
    char *server;
    enum fd_proto proto;
    int port;
    enum fd_tls tls;
    bool verify;
    char *ca;                   /* NULL: the system store */
    char *fingerprint;          /* "sha256:hex" (lower case, no colons) or NULL */
    char *user;
    char *password;
    char *mailbox;              /* IMAP folder, default INBOX */
    struct fd_target deliver;
    char *envelope;             /* header name; default X-Original-To */
    char **localdomains;        /* lower case */
    size_t nlocaldomains;
    struct fd_map *maps;
    size_t nmaps;
    char *postmaster;           /* last-resort recipient, default postmaster */
    bool keep;
    long fetch_limit;           /* 0 = none */
    uint64_t size_limit;        /* 0 = none */
    enum fd_reject on_reject;
    int64_t timeout;            /* seconds, every network step */
    long batch_count;           /* IMAP: messages per UID FETCH */
    uint64_t batch_size;        /* IMAP: bytes per UID FETCH */
    bool idle;                  /* use IMAP IDLE in daemon mode when offered */
    long mda_concurrency;       /* mda: programs running at once */
};

struct fd_config {
    char *file;
    char *state;
    int64_t interval;
    struct fd_account *accounts;
    size_t naccounts;
};

/* Every problem is printed to ERRS as "FILE:LINE: message". Returns NULL
 * when there was at least one. */
struct fd_config *fd_config_load(const char *file, FILE *errs);
void fd_config_free(struct fd_config *c);

/* Splits an mda command into words: whitespace separates, '...' and "..."
 * quote (backslash escapes inside "" and outside quotes), no expansion.
 * Returns the argv (NULL-terminated) and *argc, or NULL with a reason. */
char **fd_split_command(const char *cmd, size_t *argc, const char **why);
void fd_free_argv(char **argv);

#endif
