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

int catchall_store(struct ca_writer *w, const char *host, const char *qid, const char *sender,
                   char *const *rcpt, const struct bmx_mailbox *const *mbox, size_t n,
                   struct evbuffer *msg, ca_done_cb cb, void *arg)
{
    size_t len = evbuffer_get_length(msg), blen, ncopies = 0;
    const char *raw = (const char *)evbuffer_pullup(msg, -1);
    char *body = catchall_rename_headers(raw != NULL ? raw : "", len, &blen);
    struct ca_copy *copies = calloc(n, sizeof *copies);
    if (body == NULL || copies == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (mbox[i] == NULL)
            continue;
        copies[ncopies].mb = mbox[i];
        if ((copies[ncopies].rcpt = strdup(rcpt[i])) == NULL)
            goto fail;
        ncopies++;
    }
    if (ca_writer_submit(w, host, qid, sender, body, blen, copies, ncopies, cb, arg) == 0)
        return 0;
fail:
    for (size_t i = 0; copies != NULL && i < ncopies; i++)
        free(copies[i].rcpt);
    free(copies);
    free(body);
    errno = ENOMEM;
    return -1;
}
