/* Queues delivery status notifications: a DSN is a new message from <> to
 * the original sender, delivered like any other (by MX lookup of the
 * sender's domain). Mail from <> is never bounced (RFC 5321 6.1, 4.5.5). */
#include "sched_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "bounce.h"
#include "log.h"

struct dsn_ctx {
    char id[QUEUE_ID_LEN + 1];
    char orig[QUEUE_ID_LEN + 1];
    struct scheduler *s;
};

static void dsn_stored_cb(void *arg, int error)
{
    struct dsn_ctx *c = arg;
    if (error != 0)
        log_err("%s: cannot queue the delivery status notification", c->orig);
    else
        log_info("%s: sender non-delivery notification: %s", c->orig, c->id);
    sched_kick(c->s);
    free(c);
}

static int queue_dsn(struct scheduler *s, const struct queue_envelope *orig,
                     struct evbuffer *msg, uint32_t flags, struct dsn_ctx *c)
{
    struct queue_rcpt r = {
        .addr = orig->sender, .state = RCPT_DEFERRED,
        .next_attempt = (int64_t)time(NULL),
    };
    struct queue_envelope env = {
        .sender = "", .helo = (char *)s->cfg->hostname, .client_addr = "127.0.0.1",
        .client_name = "localhost", .arrival = (int64_t)time(NULL),
        .size = evbuffer_get_length(msg), .nrcpt = 1, .rcpt = &r,
        .flags = flags,
    };
    memcpy(env.id, c->id, sizeof env.id);
    return queue_store(s->q, &env, msg, dsn_stored_cb, c);
}

void sched_send_dsn(struct scheduler *s, const struct queue_envelope *env,
                    const struct job_rcpt *r, size_t n, bool delayed,
                    const char *remote)
{
    if (env->sender == NULL || env->sender[0] == '\0') {
        log_info("%s: not bouncing a message from the null sender", env->id);
        return;
    }
    struct bounce_rcpt *br = calloc(n, sizeof *br);
    struct evbuffer *orig = evbuffer_new();
    struct evbuffer *msg = evbuffer_new();
    struct dsn_ctx *c = calloc(1, sizeof *c);
    struct queue_envelope tmp;
    bool have_orig = false;
    if (br == NULL || orig == NULL || msg == NULL || c == NULL)
        goto fail;
    have_orig = queue_get(s->q, env->id, &tmp, orig) == 0;
    if (have_orig)
        queue_envelope_free(&tmp);
    char status[16 * 64];
    for (size_t i = 0; i < n && i < 64; i++) {
        const char *reply = r[i].reply;
        char *st = status + 16 * i;
        /* "550 5.1.1 ..." or "4.4.7 ..." -> the enhanced code */
        const char *p = reply;
        if (strlen(p) > 4 && p[3] == ' ')
            p += 4;
        size_t k = strcspn(p, " ");
        if (k > 0 && k < 16 && p[1] == '.')
            snprintf(st, 16, "%.*s", (int)k, p);
        else
            snprintf(st, 16, "%s", delayed ? "4.0.0" : "5.0.0");
        br[i] = (struct bounce_rcpt){
            .addr = r[i].addr, .status = st, .remote_mta = remote,
            .diagnostic = reply, .last_attempt = (int64_t)time(NULL),
        };
    }
    if (n > 64)
        n = 64;
    queue_new_id(s->q, c->id);
    memcpy(c->orig, env->id, sizeof c->orig);
    c->s = s;
    if (bounce_build(msg, delayed ? BOUNCE_DELAYED : BOUNCE_FAILED, s->cfg->hostname,
                     c->id, env, br, n, orig, (int64_t)time(NULL)) != 0
        || queue_dsn(s, env, msg, bounce_qenv_flags(env, have_orig ? orig : NULL), c) != 0)
        goto fail;
    c = NULL;                    /* dsn_stored_cb owns it */
fail:
    if (c != NULL)
        log_err("%s: cannot create a delivery status notification", env->id);
    free(c);
    free(br);
    if (orig != NULL)
        evbuffer_free(orig);
    if (msg != NULL)
        evbuffer_free(msg);
}
