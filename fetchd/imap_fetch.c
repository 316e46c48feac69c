/* IMAP retrieval with libetpan (RFC 3501, 2177 IDLE, 4315 UIDPLUS):
 * CAPABILITY, STARTTLS, LOGIN, SELECT, UID SEARCH ALL, UID FETCH
 * (RFC822.SIZE) for the listing, then UID FETCH BODY.PEEK[] by batches of
 * UID ranges (never one round trip per message), UID STORE +FLAGS.SILENT
 * (\Deleted) and UID EXPUNGE of exactly those UIDs when UIDPLUS is offered
 * (else EXPUNGE). Message ids are MAILBOX/UIDVALIDITY/UID, so a mailbox
 * whose UIDVALIDITY changed is fetched again rather than mistaken for the
 * old one. */
#include "fetcher.h"
#include "log.h"
#include "tls_verify.h"

#include <libetpan/libetpan.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct imap {
    mailimap *imap;
    uint32_t uidvalidity;
    bool idling;
};

static const char *imap_strerror(int r)
{
    switch (r) {
    case MAILIMAP_ERROR_BAD_STATE: return "unexpected state";
    case MAILIMAP_ERROR_STREAM: return "connection lost or timed out";
    case MAILIMAP_ERROR_PARSE: return "cannot parse the server's response";
    case MAILIMAP_ERROR_CONNECTION_REFUSED: return "connection refused";
    case MAILIMAP_ERROR_MEMORY: return "out of memory";
    case MAILIMAP_ERROR_FATAL: return "the server closed the session";
    case MAILIMAP_ERROR_PROTOCOL: return "protocol error";
    case MAILIMAP_ERROR_LOGIN: return "login failed";
    case MAILIMAP_ERROR_SELECT: return "SELECT failed";
    case MAILIMAP_ERROR_FETCH: return "FETCH failed";
    case MAILIMAP_ERROR_STORE: return "STORE failed";
    case MAILIMAP_ERROR_EXPUNGE: return "EXPUNGE failed";
    case MAILIMAP_ERROR_SEARCH: return "SEARCH failed";
    case MAILIMAP_ERROR_STARTTLS: return "STARTTLS failed";
    case MAILIMAP_ERROR_SSL: return "TLS handshake failed";
    case MAILIMAP_ERROR_CAPABILITY: return "CAPABILITY failed";
    default: return "error";
    }
}

static int fail(struct fetcher *f, const char *what, int r)
{
    struct imap *p = f->impl;
    const char *resp = p && p->imap ? p->imap->imap_response : NULL;
    snprintf(f->err, sizeof f->err, "%s: %s%s%s%s", what, imap_strerror(r),
             resp ? " (server said: " : "", resp ? resp : "", resp ? ")" : "");
    return FETCH_ERROR;
}

static void logger_cb(mailimap *imap, int type, const char *str, size_t size, void *ctx)
{
    (void)imap;
    trace_protocol(ctx, type, str, size);
}

static int capability(struct fetcher *f)
{
    struct imap *p = f->impl;
    struct mailimap_capability_data *cap = NULL;
    int r = mailimap_capability(p->imap, &cap);
    if (r != MAILIMAP_NO_ERROR)
        return fail(f, "CAPABILITY", r);
    mailimap_capability_data_free(cap);
    return FETCH_OK;
}

static int imap_connect(struct fetcher *f, struct imap *p)
{
    const struct fd_account *a = f->acct;
    int r;
    if (a->tls == FTLS_IMPLICIT)
        r = mailimap_ssl_connect_with_callback(p->imap, a->server, (uint16_t)a->port,
                                               tls_sni_callback, (void *)a);
    else
        r = mailimap_socket_connect(p->imap, a->server, (uint16_t)a->port);
    if (r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED && r != MAILIMAP_NO_ERROR_AUTHENTICATED) {
        snprintf(f->err, sizeof f->err, "cannot connect to %s port %d%s: %s", a->server, a->port,
                 a->tls == FTLS_IMPLICIT ? " (implicit TLS)" : "", imap_strerror(r));
        return FETCH_ERROR;
    }
    if (capability(f) != FETCH_OK)
        return FETCH_ERROR;
    if (a->tls == FTLS_STARTTLS) {
        if (!mailimap_has_extension(p->imap, "STARTTLS")) {
            snprintf(f->err, sizeof f->err,
                     "%s does not offer STARTTLS (tls = \"starttls\"): not sending the password",
                     a->server);
            return FETCH_ERROR;
        }
        r = mailimap_socket_starttls_with_callback(p->imap, tls_sni_callback, (void *)a);
        if (r != MAILIMAP_NO_ERROR)
            return fail(f, "STARTTLS", r);
    }
    if (a->tls != FTLS_NONE) {
        char why[400];
        if (tls_verify_peer(p->imap->imap_stream, a, why, sizeof why) != 0) {
            snprintf(f->err, sizeof f->err, "TLS with %s port %d: %s (not logging in)", a->server,
                     a->port, why);
            return FETCH_ERROR;
        }
        /* Capabilities seen before STARTTLS are not to be trusted. */
        if (a->tls == FTLS_STARTTLS && capability(f) != FETCH_OK)
            return FETCH_ERROR;
    }
    return FETCH_OK;
}

static int imap_open(struct fetcher *f)
{
    const struct fd_account *a = f->acct;
    struct imap *p = calloc(1, sizeof *p);
    if (p == NULL || (p->imap = mailimap_new(0, NULL)) == NULL) {
        free(p);
        snprintf(f->err, sizeof f->err, "out of memory");
        return FETCH_ERROR;
    }
    f->impl = p;
    mailimap_set_timeout(p->imap, (time_t)a->timeout);
    if (log_verbose())
        mailimap_set_logger(p->imap, logger_cb, (void *)a);
    if (imap_connect(f, p) != FETCH_OK)
        return FETCH_ERROR;
    if (p->imap->imap_state == MAILIMAP_STATE_NON_AUTHENTICATED) {
        if (mailimap_has_extension(p->imap, "LOGINDISABLED")) {
            snprintf(f->err, sizeof f->err, "%s refuses LOGIN here (LOGINDISABLED)", a->server);
            return FETCH_ERROR;
        }
        int r = mailimap_login(p->imap, a->user, a->password);
        if (r != MAILIMAP_NO_ERROR)
            return fail(f, "LOGIN", r);
        if (capability(f) != FETCH_OK)
            return FETCH_ERROR;
    }
    int r = mailimap_select(p->imap, a->mailbox);
    if (r != MAILIMAP_NO_ERROR)
        return fail(f, "SELECT", r);
    if (p->imap->imap_selection_info == NULL
        || p->imap->imap_selection_info->sel_uidvalidity == 0) {
        snprintf(f->err, sizeof f->err, "SELECT %s: the server gave no UIDVALIDITY", a->mailbox);
        return FETCH_ERROR;
    }
    p->uidvalidity = p->imap->imap_selection_info->sel_uidvalidity;
    return FETCH_OK;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* A UID set of the sorted UIDS, consecutive ones as ranges. */
static struct mailimap_set *uid_set(const uint32_t *uids, size_t n)
{
    struct mailimap_set *set = mailimap_set_new_empty();
    for (size_t i = 0; set != NULL && i < n;) {
        size_t j = i;
        while (j + 1 < n && uids[j + 1] == uids[j] + 1)
            j++;
        if (mailimap_set_add_interval(set, uids[i], uids[j]) != MAILIMAP_NO_ERROR) {
            mailimap_set_free(set);
            return NULL;
        }
        i = j + 1;
    }
    return set;
}

static struct mailimap_set *msgs_set(struct fetch_msg *const *msgs, size_t n)
{
    uint32_t *uids = calloc(n ? n : 1, sizeof *uids);
    if (uids == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        uids[i] = msgs[i]->num;
    qsort(uids, n, sizeof *uids, cmp_u32);
    struct mailimap_set *set = uid_set(uids, n);
    free(uids);
    return set;
}

/* The static attribute of type TYPE in a FETCH response, or NULL. */
static struct mailimap_msg_att_static *att_find(struct mailimap_msg_att *att, int type)
{
    for (clistiter *it = clist_begin(att->att_list); it != NULL; it = clist_next(it)) {
        struct mailimap_msg_att_item *item = clist_content(it);
        if (item->att_type == MAILIMAP_MSG_ATT_ITEM_STATIC
            && item->att_data.att_static->att_type == type)
            return item->att_data.att_static;
    }
    return NULL;
}

static int uid_fetch(struct fetcher *f, struct mailimap_set *set, bool body, clist **result)
{
    struct imap *p = f->impl;
    struct mailimap_fetch_type *ft = mailimap_fetch_type_new_fetch_att_list_empty();
    if (ft == NULL)
        return MAILIMAP_ERROR_MEMORY;
    mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_uid());
    if (body)
        mailimap_fetch_type_new_fetch_att_list_add(
            ft, mailimap_fetch_att_new_body_peek_section(mailimap_section_new(NULL)));
    else
        mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_rfc822_size());
    int r = mailimap_uid_fetch(p->imap, set, ft, result);
    mailimap_fetch_type_free(ft);
    return r;
}

static int imap_list(struct fetcher *f, struct fetch_msg **out, size_t *nout)
{
    struct imap *p = f->impl;
    clist *found = NULL;
    struct mailimap_search_key *key = mailimap_search_key_new_all();
    int r = mailimap_uid_search(p->imap, NULL, key, &found);
    mailimap_search_key_free(key);
    if (r != MAILIMAP_NO_ERROR)
        return fail(f, "UID SEARCH", r);
    size_t n = (size_t)clist_count(found), k = 0;
    uint32_t *uids = calloc(n ? n : 1, sizeof *uids);
    struct fetch_msg *msgs = calloc(n ? n : 1, sizeof *msgs);
    if (uids == NULL || msgs == NULL)
        goto oom;
    for (clistiter *it = clist_begin(found); it != NULL; it = clist_next(it))
        uids[k++] = *(uint32_t *)clist_content(it);
    mailimap_search_result_free(found);
    found = NULL;
    qsort(uids, n, sizeof *uids, cmp_u32);
    for (size_t i = 0; i < n; i++)
        msgs[i].num = uids[i];
    if (n > 0) {
        struct mailimap_set *set = uid_set(uids, n);
        clist *res = NULL;
        if (set == NULL)
            goto oom;
        r = uid_fetch(f, set, false, &res);
        mailimap_set_free(set);
        if (r != MAILIMAP_NO_ERROR) {
            free(uids);
            free(msgs);
            return fail(f, "UID FETCH (RFC822.SIZE)", r);
        }
        for (clistiter *it = clist_begin(res); it != NULL; it = clist_next(it)) {
            struct mailimap_msg_att_static *u = att_find(clist_content(it), MAILIMAP_MSG_ATT_UID);
            struct mailimap_msg_att_static *s =
                att_find(clist_content(it), MAILIMAP_MSG_ATT_RFC822_SIZE);
            if (u == NULL || s == NULL)
                continue;
            uint32_t *hit = bsearch(&u->att_data.att_uid, uids, n, sizeof *uids, cmp_u32);
            if (hit != NULL)
                msgs[hit - uids].size = s->att_data.att_rfc822_size;
        }
        mailimap_fetch_list_free(res);
    }
    for (size_t i = 0; i < n; i++) {
        char id[600];
        snprintf(id, sizeof id, "%s/%u/%u", f->acct->mailbox, p->uidvalidity, msgs[i].num);
        if ((msgs[i].id = strdup(id)) == NULL) {
            fetch_msgs_free(msgs, i);
            msgs = NULL;
            goto oom;
        }
    }
    free(uids);
    *out = msgs;
    *nout = n;
    return FETCH_OK;
oom:
    if (found != NULL)
        mailimap_search_result_free(found);
    free(uids);
    free(msgs);
    snprintf(f->err, sizeof f->err, "out of memory");
    return FETCH_ERROR;
}

static int imap_fetch(struct fetcher *f, struct fetch_msg *const *msgs, size_t n, fetch_cb cb,
                      void *arg)
{
    struct mailimap_set *set = msgs_set(msgs, n);
    clist *res = NULL;
    if (set == NULL) {
        snprintf(f->err, sizeof f->err, "out of memory");
        return FETCH_ERROR;
    }
    int r = uid_fetch(f, set, true, &res);
    mailimap_set_free(set);
    if (r != MAILIMAP_NO_ERROR)
        return fail(f, "UID FETCH BODY.PEEK[]", r);
    int rc = FETCH_OK;
    /* In the order asked for; unsolicited FETCH responses (flag updates)
     * carry no body and are skipped. A message that vanished in between
     * (expunged by someone else) is simply not there. */
    for (size_t i = 0; i < n && rc == FETCH_OK; i++) {
        for (clistiter *it = clist_begin(res); it != NULL; it = clist_next(it)) {
            struct mailimap_msg_att_static *u = att_find(clist_content(it), MAILIMAP_MSG_ATT_UID);
            struct mailimap_msg_att_static *b =
                att_find(clist_content(it), MAILIMAP_MSG_ATT_BODY_SECTION);
            if (u == NULL || b == NULL || u->att_data.att_uid != msgs[i]->num)
                continue;
            const char *body = b->att_data.att_body_section->sec_body_part;
            size_t len = b->att_data.att_body_section->sec_length;
            if (cb(msgs[i], body ? body : "", body ? len : 0, arg) != 0)
                rc = FETCH_STOPPED;
            break;
        }
    }
    mailimap_fetch_list_free(res);
    return rc;
}

static int imap_remove(struct fetcher *f, struct fetch_msg *const *msgs, size_t n)
{
    struct imap *p = f->impl;
    struct mailimap_set *set = msgs_set(msgs, n);
    struct mailimap_flag_list *fl = mailimap_flag_list_new_empty();
    struct mailimap_store_att_flags *sa = NULL;
    int r = MAILIMAP_ERROR_MEMORY;
    if (set != NULL && fl != NULL && mailimap_flag_list_add(fl, mailimap_flag_new_deleted()) == 0
        && (sa = mailimap_store_att_flags_new_add_flags_silent(fl)) != NULL) {
        fl = NULL;
        r = mailimap_uid_store(p->imap, set, sa);
    }
    if (sa != NULL)
        mailimap_store_att_flags_free(sa);
    if (fl != NULL)
        mailimap_flag_list_free(fl);
    if (r == MAILIMAP_NO_ERROR) {
        if (mailimap_has_uidplus(p->imap))
            r = mailimap_uid_expunge(p->imap, set);
        else
            r = mailimap_expunge(p->imap);
        if (set != NULL)
            mailimap_set_free(set);
        return r == MAILIMAP_NO_ERROR ? FETCH_OK : fail(f, "EXPUNGE", r);
    }
    if (set != NULL)
        mailimap_set_free(set);
    return fail(f, "UID STORE +FLAGS (\\Deleted)", r);
}

static void free_session(struct fetcher *f)
{
    struct imap *p = f->impl;
    if (p == NULL)
        return;
    if (p->imap != NULL)
        mailimap_free(p->imap);
    free(p);
    f->impl = NULL;
}

static int imap_commit(struct fetcher *f)
{
    struct imap *p = f->impl;
    if (p->idling)
        mailimap_idle_done(p->imap);
    mailimap_logout(p->imap);
    free_session(f);
    return FETCH_OK;
}

static void imap_close(struct fetcher *f)
{
    free_session(f);
}

/* Starts IDLE; returns the descriptor to watch, or -1 (not offered,
 * disabled, or failed). The caller ends it with idle_done within 29
 * minutes (RFC 2177). libetpan may already hold data the descriptor no
 * longer shows (TLS), which the periodic re-IDLE bounds. */
static int imap_idle_start(struct fetcher *f)
{
    struct imap *p = f->impl;
    if (!f->acct->idle || !mailimap_has_idle(p->imap))
        return -1;
    int r = mailimap_idle(p->imap);
    if (r != MAILIMAP_NO_ERROR) {
        fail(f, "IDLE", r);
        return -1;
    }
    p->idling = true;
    return mailimap_idle_get_fd(p->imap);
}

static int imap_idle_done(struct fetcher *f)
{
    struct imap *p = f->impl;
    p->idling = false;
    int r = mailimap_idle_done(p->imap);
    return r == MAILIMAP_NO_ERROR ? FETCH_OK : fail(f, "IDLE DONE", r);
}

const struct fetcher_ops imap_fetcher_ops = {
    .name = "imap",
    .open = imap_open,
    .list = imap_list,
    .fetch = imap_fetch,
    .remove = imap_remove,
    .commit = imap_commit,
    .close = imap_close,
    .idle_start = imap_idle_start,
    .idle_done = imap_idle_done,
};
