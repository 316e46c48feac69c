/* Connections per client address, for the per-IP limits of the SMTP and
 * the POP3/IMAP listeners. */
#ifndef BMX_IPCOUNT_H
#define BMX_IPCOUNT_H

struct ipcount;

struct ipcount *ipcount_new(void);
void ipcount_free(struct ipcount *t);
/* Counts one more connection from IP; returns the count including it, or
 * 0 when out of memory. */
unsigned ipcount_acquire(struct ipcount *t, const char *ip);
void ipcount_release(struct ipcount *t, const char *ip);

#endif
