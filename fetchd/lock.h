/* The run lock: one fetchd at a time per state directory. */
#ifndef FETCHD_LOCK_H
#define FETCHD_LOCK_H

/* Takes an exclusive, non-blocking lock on STATE/fetchd.lock and writes the
 * pid into it. Returns the descriptor (kept open for the whole run), -1 when
 * another fetchd holds it (*busy set), or -1 on another error (reason in
 * errno). */
int lock_take(const char *state, int *busy);

/* The pid recorded in the lock file, 0 if unknown. */
long lock_holder(const char *state);

#endif
