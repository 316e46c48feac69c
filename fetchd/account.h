/* One pass over one account: fetch -> deliver -> record -> delete. */
#ifndef FETCHD_ACCOUNT_H
#define FETCHD_ACCOUNT_H

#include <signal.h>
#include <stdbool.h>

#include "fetchd_conf.h"
#include "fetcher.h"
#include "state_bdb.h"

/* Set by SIGTERM/SIGINT: finish the message in hand, then stop. */
extern volatile sig_atomic_t fetchd_stopping;
/* Set by SIGUSR1 in daemon mode: poll every account now. */
extern volatile sig_atomic_t fetchd_wakeup;

/* Runs one pass. 0 when it went through (messages may still be waiting for
 * a temporary failure to clear), -1 when the account failed (cannot
 * connect, log in, list, reach the delivery target, or write the state).
 * With SESSION (daemon mode), a session that ended well and can IDLE is
 * left open and idling in *session (its descriptor in idle_fd); else
 * *session is NULL. */
int account_run(const struct fd_account *a, struct state *st, struct fetcher **session);

/* Ends the IDLE of a session left open by account_run and logs out. */
void account_close(struct fetcher *f);

#endif
