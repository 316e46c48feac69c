/* Who we accept mail for: configured domains only, and within a domain only
 * the recipients its list (or, later, a callout) vouches for. Deciding at RCPT
 * time is what keeps a backup MX from bouncing to forged senders. */
#ifndef BMX_POLICY_H
#define BMX_POLICY_H

#include "addr.h"
#include "config.h"

enum rcpt_verdict {
    VERDICT_OK = 0,
    VERDICT_RELAY_DENIED,        /* 550 5.7.1: not one of our domains */
    VERDICT_ROUTING,             /* 550 5.7.1: sender-specified routing */
    VERDICT_UNKNOWN_USER,        /* 550 5.1.1: the list says no */
    VERDICT_UNVERIFIED,          /* 450 4.1.1: nobody can vouch right now */
    VERDICT_TEMPFAIL,            /* 451 4.3.0: a local problem (list unreadable) */
    VERDICT_VERIFY,              /* ask the callout (verify = true) */
};

struct policy;

struct policy *policy_new(const struct bmx_config *cfg);
void policy_free(struct policy *p);

/* Checks a recipient; *DOM is set to its domain entry when there is one. */
enum rcpt_verdict policy_check_rcpt(struct policy *p, const struct mailaddr *a,
                                    const struct bmx_domain **dom);

#endif
