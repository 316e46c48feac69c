/* The IMAP server session (see mconn.h for how it is driven). */
#ifndef BMX_IMAP_SESSION_H
#define BMX_IMAP_SESSION_H

#include "mconn.h"

extern const struct mproto imap_proto;

#endif
