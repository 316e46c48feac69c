/* POP3 server session (RFC 1939, 2449, 2595, 3206, 5034) for the catch-all
 * mailboxes: a struct mproto driven by mconn. */
#ifndef BMX_POP3_SESSION_H
#define BMX_POP3_SESSION_H

#include "mconn.h"

extern const struct mproto pop3_proto;

#endif
