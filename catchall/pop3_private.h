/* What pop3_session.c (states, input, AUTHORIZATION) and pop3_trans.c
 * (TRANSACTION, streaming, UPDATE) share. */
#ifndef BMX_POP3_PRIVATE_H
#define BMX_POP3_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "mconn.h"
#include "pop3_retr.h"

/* Commands are not read, nor more of a message produced, while this much
 * output waits (mconn.h). */
#define POP3_OUT_HIGH_WATER (256 * 1024)

enum pop3_state {
    P_AUTH,             /* AUTHORIZATION (RFC 1939 4) */
    P_SASL,             /* AUTH PLAIN sent "+ ", waiting for the response */
    P_DELAY,            /* a failed login's answer held back, input paused */
    P_STLS,             /* "+OK Begin TLS negotiation" sent; plaintext is void */
    P_TRANS,            /* TRANSACTION: logged in, maildrop locked and open */
    P_STREAM,           /* TRANSACTION, a RETR/TOP body going out as output drains */
    P_UPDATE,           /* QUIT received in TRANSACTION: removing DELE'd messages */
    P_QUIT,             /* the last reply is being flushed, then close */
    P_STATE_COUNT
};

/* A RETR or TOP response being streamed. */
struct pop3_xfer {
    int fd;
    size_t idx;                 /* 0-based message index */
    bool top;
    uint64_t lines;             /* TOP's line count */
    uint64_t used;              /* bytes of the file turned into output */
    struct pop3_stuffer st;
};

struct pop3_session {
    struct mconn *c;
    const struct bmx_config *cfg;
    enum pop3_state state;
    bool discard_line;          /* inside a too-long command line */
    unsigned bad;               /* unknown or malformed commands */
    char user[256];             /* from USER, for PASS */
    bool have_user;
    enum auth_result held;      /* a failed login's outcome, answered later */

    /* TRANSACTION */
    char *mbname;               /* logged-in mailbox; holds mailbox_lock */
    struct mailbox *mb;
    size_t count;               /* messages at login; fixed for the session */
    bool *deleted;              /* DELE marks, COUNT entries */
    unsigned retrieved;
    struct pop3_xfer xfer;
};

void pop3_reply(struct pop3_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A -ERR for an unknown or malformed command; too many close the session. */
void pop3_bad(struct pop3_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pop3_enter(struct pop3_session *s, enum pop3_state st);
/* Enters P_QUIT and closes once the output is written. */
void pop3_close(struct pop3_session *s);

/* pop3_trans.c: TRANSACTION commands. ARGS is what follows the verb. */
void pop3_cmd_stat(struct pop3_session *s, const char *args);
void pop3_cmd_list(struct pop3_session *s, const char *args);
void pop3_cmd_uidl(struct pop3_session *s, const char *args);
void pop3_cmd_retr(struct pop3_session *s, const char *args);
void pop3_cmd_top(struct pop3_session *s, const char *args);
void pop3_cmd_dele(struct pop3_session *s, const char *args);
void pop3_cmd_rset(struct pop3_session *s, const char *args);
/* QUIT in TRANSACTION: the UPDATE state, then close. */
void pop3_update(struct pop3_session *s);
/* Continues a RETR/TOP body while output is below the high-water mark.
 * Returns true when the session can read commands again. */
bool pop3_stream(struct pop3_session *s);
/* The connection of a logged-in session ended without QUIT: log it;
 * nothing is deleted (RFC 1939 6). Then pop3_release(). */
void pop3_lost(struct pop3_session *s);
/* Closes the mailbox (and a half-sent message), forgets the DELE marks
 * and releases the maildrop lock. */
void pop3_release(struct pop3_session *s);

#endif
