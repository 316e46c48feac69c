/* What imap_session.c (input, states, most commands), imap_fetch.c (FETCH,
 * streamed as output drains) and imap_search.c (SEARCH) share. */
#ifndef BMX_IMAP_PRIVATE_H
#define BMX_IMAP_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "imap_parse.h"
#include "mailbox.h"
#include "mconn.h"

/* No command is read, nor more FETCH output produced, while this much
 * output waits (mconn.h). */
#define IMAP_OUT_HIGH_WATER (256 * 1024)

/* Headers larger than this are parsed (ENVELOPE, HEADER.FIELDS, SEARCH
 * HEADER) only up to here; BODY[HEADER] still sends them whole. */
#define IMAP_HEADER_PARSE_MAX (256 * 1024)

enum imap_state {
    I_NOTAUTH,          /* not authenticated (RFC 3501 3.1) */
    I_AUTH,             /* authenticated, nothing selected */
    I_SELECTED,         /* INBOX selected (or examined) */
    I_LOGOUT,           /* BYE sent, closing */
};

/* What the session waits for besides commands. */
enum imap_wait {
    W_COMMAND,          /* the next command (line and literals) */
    W_SASL,             /* AUTHENTICATE PLAIN sent "+ ": the response line */
    W_DELAY,            /* a failed login's answer held back, input paused */
    W_IDLE,             /* IDLE: "DONE" */
    W_FETCH,            /* a FETCH going out as output drains */
    W_STARTTLS,         /* "Begin TLS" sent; what follows is discarded */
};

struct imap_fetch_job;

struct imap_session {
    struct mconn *c;
    const struct bmx_config *cfg;
    enum imap_state state;
    enum imap_wait wait;
    char tag[IMAP_TAG_MAX + 1];     /* of the command being answered */
    unsigned bad;                   /* BAD replies; too many close the session */

    /* command assembly: lines and literals until the command is whole */
    struct evbuffer *cmd;
    uint64_t literal_left;          /* bytes of a literal still to come */
    bool discard_line;              /* inside a too-long line */

    /* login */
    enum auth_result held;          /* a failed login's outcome, answered later */
    const struct bmx_mailbox *mbox; /* after login */

    /* selected state */
    struct mailbox *mb;
    bool readonly;                  /* EXAMINE */
    size_t exists;                  /* message count the client was told */
    struct mailbox_watch *watch;    /* during IDLE */
    struct imap_fetch_job *job;     /* during W_FETCH */
};

/* "* ..." or "TAG ..." lines; CRLF is added. */
void imap_untagged(struct imap_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void imap_tagged(struct imap_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A tagged BAD; too many close the session. */
void imap_bad(struct imap_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The FLAGS list of message I, with \Recent: "(\Seen \Recent)". */
void imap_put_flags(struct evbuffer *out, const struct mbox_msg *m);

/* The selected messages as 0-based indices, ascending: sequence numbers,
 * or UIDs with UID. NULL with *N = 0 when none match (not an error). For
 * sequence numbers beyond the mailbox returns false (a BAD). */
bool imap_resolve_set(struct imap_session *s, const struct imap_seqset *set, bool uid,
                      size_t **idx, size_t *n);

/* imap_fetch.c. FETCH / UID FETCH after the command name: starts the job
 * (taking over PS) and runs it; the tagged reply goes out when it ends. */
void imap_cmd_fetch(struct imap_session *s, struct imap_parser *ps, bool uid);
/* Continues the running FETCH; true when it has finished. */
bool imap_fetch_run(struct imap_session *s);
void imap_fetch_free(struct imap_fetch_job *job);

/* Reads up to MAX bytes of message I's header into a malloc'd buffer
 * (*HDR, *LEN), and its full header size into *HSIZE; FD is the open
 * message. -1 on a read error. */
int imap_read_header(int fd, size_t max, char **hdr, size_t *len, uint64_t *hsize);

/* imap_search.c. SEARCH / UID SEARCH after the command name. */
void imap_cmd_search(struct imap_session *s, struct imap_parser *ps, bool uid);

#endif
