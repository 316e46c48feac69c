/* The control socket: bmxq's way into the running daemon (list, show,
 * stats, flush, hold, release, delete, bounce). A UNIX stream socket at
 * cfg->control, mode 0660, owned by the daemon's user and group; callers
 * other than root, that user and members of that group are refused. The
 * line protocol is in control_proto.h and bmxq(1). Nothing here blocks the
 * event loop on a client: long answers (list, stats over a big queue) are
 * made a slice at a time, as fast as the client reads them. */
#ifndef BMX_CONTROL_H
#define BMX_CONTROL_H

#include "config.h"

struct event_base;
struct queue;
struct scheduler;
struct control;

/* Creates the socket (replacing a stale one left by a dead daemon; refusing
 * when another process still listens on it) and starts accepting. Call it
 * after privileges were dropped, with the scheduler running. NULL (logged)
 * on failure. */
struct control *control_new(struct event_base *base,
                            const struct bmx_config *cfg, struct queue *q,
                            struct scheduler *s);
/* Closes every client connection and the socket, and removes the socket
 * file (when it is still ours). Call it before scheduler_free. */
void control_free(struct control *c);

#endif
