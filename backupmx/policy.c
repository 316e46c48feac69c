/* Recipient policy. Order matters: routing tricks and foreign domains are
 * refused before any list is consulted, so we are never an open relay. */
#include "policy.h"

#include <stdlib.h>

#include "rcptlist.h"

struct policy {
    const struct bmx_config *cfg;
    struct rcptlist **lists;     /* parallel to cfg->domains; NULL = none */
};

struct policy *policy_new(const struct bmx_config *cfg)
{
    struct policy *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->cfg = cfg;
    p->lists = calloc(cfg->ndomains + 1, sizeof *p->lists);
    if (p->lists == NULL)
        goto fail;
    for (size_t i = 0; i < cfg->ndomains; i++) {
        if (cfg->domains[i].recipients == NULL)
            continue;
        p->lists[i] = rcptlist_new(cfg->domains[i].recipients);
        if (p->lists[i] == NULL)
            goto fail;
    }
    return p;
fail:
    policy_free(p);
    return NULL;
}

void policy_free(struct policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; p->lists != NULL && i < p->cfg->ndomains; i++)
        rcptlist_free(p->lists[i]);
    free(p->lists);
    free(p);
}

enum rcpt_verdict policy_check_rcpt(struct policy *p, const struct mailaddr *a,
                                    const struct bmx_domain **dom)
{
    *dom = NULL;
    if (a->null || a->literal)
        return VERDICT_RELAY_DENIED;
    const struct bmx_domain *d = config_find_domain(p->cfg, a->domain);
    if (d == NULL)
        return VERDICT_RELAY_DENIED;
    *dom = d;
    struct rcptlist *list = p->lists[d - p->cfg->domains];
    if (list != NULL) {
        int r = rcptlist_contains(list, a->full);
        if (r == 1)
            return VERDICT_OK;
        if (r == 0 && !d->verify)
            return VERDICT_UNKNOWN_USER;
        if (r < 0 && !d->verify)
            return VERDICT_TEMPFAIL;
    }
    return d->verify ? VERDICT_VERIFY : VERDICT_OK;
}
