/* Catch-all delivery. Forged envelope headers are renamed rather than
 * removed: a multidrop puller routes by the topmost X-Original-To, so ours
 * must be the only one, but the operator may still want to see what the
 * sender claimed. No Delivered-To: the primary's Postfix would treat the
 * re-injected copy as a forwarding loop. */
#include "catchall_store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log.h"
#include "mailbox.h"
#include "maildir.h"

/* X-Original-To -> X-Untrusted-Original-To, Return-Path -> X-Untrusted-Return-Path */
static const struct {
    const char *name;
    size_t at;                  /* where the marker goes */
    const char *marker;
} untrusted[] = {
    { "X-Original-To", 2, "Untrusted-" },
    { "Return-Path", 0, "X-Untrusted-" },
};

enum catchall_quota catchall_quota_check(const struct bmx_mailbox *mb, uint64_t incoming)
{
    if (mb->quota == 0)
        return CA_QUOTA_OK;
    uint64_t used;
    if (maildir_usage(mb->maildir, &used) != 0) {
        log_warn("mailbox %s: cannot measure %s: %s", mb->name, mb->maildir, strerror(errno));
        return CA_QUOTA_ERROR;
    }
    return used + incoming > mb->quota ? CA_QUOTA_FULL : CA_QUOTA_OK;
}

/* Is the header line at P (LEN bytes) the field NAME? ("Name  :" counts.) */
static bool is_field(const char *p, size_t len, const char *name)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(p, name, n) != 0)
        return false;
    while (n < len && (p[n] == ' ' || p[n] == '\t'))
        n++;
    return n < len && p[n] == ':';
}

/* The entry of untrusted[] that the header line at P names, or -1. */
static int untrusted_field(const char *p, size_t len)
{
    for (size_t i = 0; i < sizeof untrusted / sizeof *untrusted; i++)
        if (is_field(p, len, untrusted[i].name))
            return (int)i;
    return -1;
}

static size_t line_len(const char *p, size_t left)
{
    const char *eol = memchr(p, '\n', left);
    return eol ? (size_t)(eol - p) + 1 : left;
}

static bool blank_line(const char *p, size_t len)
{
    return len <= 2 && (p[0] == '\r' || p[0] == '\n');
}

char *catchall_rename_headers(const char *msg, size_t len, size_t *outlen)
{
    size_t extra = 0;
    for (size_t off = 0, ll; off < len; off += ll) {
        ll = line_len(msg + off, len - off);
        if (blank_line(msg + off, ll))
            break;
        int u = untrusted_field(msg + off, ll);
        extra += u < 0 ? 0 : strlen(untrusted[u].marker);
    }
    char *out = malloc(len + extra + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0, off = 0;
    while (off < len) {
        size_t ll = line_len(msg + off, len - off);
        if (blank_line(msg + off, ll))
            break;
        int u = untrusted_field(msg + off, ll);
        size_t at = u < 0 ? 0 : untrusted[u].at;
        memcpy(out + o, msg + off, at);
        o += at;
        if (u >= 0) {
            size_t ml = strlen(untrusted[u].marker);
            memcpy(out + o, untrusted[u].marker, ml);
            o += ml;
        }
        memcpy(out + o, msg + off + at, ll - at);
        o += ll - at;
        off += ll;
    }
    memcpy(out + o, msg + off, len - off);
    o += len - off;
    *outlen = o;
    return out;
}

static void undo(const struct bmx_mailbox *const *mbox, char (*names)[256], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (mbox[i] == NULL || names[i][0] == '\0')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/new/%s", mbox[i]->maildir, names[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            log_warn("cannot remove %s: %s", path, strerror(errno));
    }
}

static int store_copy(const char *host, const char *sender, const char *rcpt,
                      const struct bmx_mailbox *mb, const char *body, size_t blen,
                      char *name, size_t namelen)
{
    char head[1200];
    int hl = snprintf(head, sizeof head, "Return-Path: <%s>\r\nX-Original-To: %s\r\n",
                      sender, rcpt);
    if (hl < 0 || (size_t)hl >= sizeof head) {
        errno = ENAMETOOLONG;
        return -1;
    }
    struct iovec iov[2] = {
        { .iov_base = head, .iov_len = (size_t)hl },
        { .iov_base = (void *)body, .iov_len = blen },
    };
    return maildir_deliver(mb->maildir, host, iov, 2, name, namelen);
}

int catchall_store(const char *host, const char *qid, const char *sender,
                   char *const *rcpt, const struct bmx_mailbox *const *mbox, size_t n,
                   struct evbuffer *msg)
{
    size_t len = evbuffer_get_length(msg), blen;
    const char *raw = (const char *)evbuffer_pullup(msg, -1);
    char *body = catchall_rename_headers(raw != NULL ? raw : "", len, &blen);
    char (*names)[256] = calloc(n, sizeof *names);
    int rc = -1, e = ENOMEM;
    if (body == NULL || names == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (mbox[i] == NULL)
            continue;
        if (store_copy(host, sender, rcpt[i], mbox[i], body, blen, names[i], sizeof names[i]) != 0) {
            e = errno;
            log_warn("%s: to=<%s>, relay=local, mailbox=%s, status=deferred (cannot write %s: %s)",
                     qid, rcpt[i], mbox[i]->name, mbox[i]->maildir, strerror(e));
            undo(mbox, names, i);
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (mbox[i] == NULL)
            continue;
        log_info("%s: to=<%s>, relay=local, mailbox=%s, size=%zu, status=sent (delivered to maildir as %s)",
                 qid, rcpt[i], mbox[i]->name, blen, names[i]);
        mailbox_notify(mbox[i]->maildir);
    }
    rc = 0;
out:
    free(body);
    free(names);
    if (rc != 0)
        errno = e;
    return rc;
}
