/* Reading the queue back: one message by id, or all of them in id order.
 * Envelope headers are fetched with DB_DBT_PARTIAL, so listing the queue
 * does not read inline bodies. No cursor is left open while a caller's
 * function runs, so it may use the queue (even store) meanwhile. */
#include "queue_private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "log.h"

/* Fetches bytes [off, off + len) of the message record ID into DATA
 * (malloc'd, fewer bytes when the record is shorter). */
static int msg_partial(struct queue *q, const char *id, u_int32_t off,
                       u_int32_t len, DBT *data)
{
    DBT key = { .data = (void *)id, .size = QUEUE_ID_LEN };
    memset(data, 0, sizeof *data);
    data->flags = DB_DBT_MALLOC | DB_DBT_PARTIAL;
    data->doff = off;
    data->dlen = len;
    return q->msgs->get(q->msgs, NULL, &key, data, 0);
}

static int corrupt(const char *id, const char *what)
{
    log_err("%s: corrupt %s record", id, what);
    errno = EIO;
    return -1;
}

/* The envelope without recipients: 0, 1 when there is no such id, -1. */
static int load_header(struct queue *q, const char *id,
                       struct queue_envelope *env, struct qmsg_info *info)
{
    DBT data;
    uint32_t hlen;
    int ret = msg_partial(q, id, 0, QREC_MSG_PEEK, &data);
    if (ret == 0 && data.size == QREC_MSG_PEEK &&
        qrec_msg_peek_hlen(data.data, data.size, &hlen) == 0 &&
        hlen > data.size) {
        free(data.data);         /* a long header: fetch all of it */
        ret = msg_partial(q, id, 0, hlen, &data);
    }
    if (ret == DB_NOTFOUND)
        return 1;
    if (ret != 0) {
        errno = queue_db_error("read message", id, ret);
        return -1;
    }
    int rc = qrec_msg_decode_header(data.data, data.size, env, info);
    free(data.data);
    if (rc < 0)
        return corrupt(id, "message");
    memcpy(env->id, id, QUEUE_ID_LEN + 1);
    return 0;
}

static int add_rcpt(struct queue_envelope *env, size_t *cap, const DBT *data)
{
    if (env->nrcpt == *cap) {
        size_t n = *cap ? *cap * 2 : 4;
        struct queue_rcpt *r = realloc(env->rcpt, n * sizeof *r);
        if (!r)
            return -1;
        env->rcpt = r;
        *cap = n;
    }
    if (qrec_rcpt_decode(data->data, data->size, &env->rcpt[env->nrcpt]) < 0)
        return corrupt(env->id, "recipient");
    env->nrcpt++;
    return 0;
}

/* Recipients are the keys ID+0000 .. ID+ffff, adjacent in the btree. */
static int load_rcpts(struct queue *q, struct queue_envelope *env)
{
    DBC *c;
    int ret = q->rcpts->cursor(q->rcpts, NULL, &c, 0);
    if (ret != 0) {
        errno = queue_db_error("cursor", env->id, ret);
        return -1;
    }
    DBT key = { .flags = DB_DBT_REALLOC, .size = QREC_RKEY_LEN };
    DBT data = { .flags = DB_DBT_REALLOC };
    size_t cap = 0;
    int rc = -1;
    if (!(key.data = malloc(QREC_RKEY_LEN)))
        goto out;
    qrec_rcpt_key(key.data, env->id, 0);
    for (ret = c->get(c, &key, &data, DB_SET_RANGE); ret == 0;
         ret = c->get(c, &key, &data, DB_NEXT)) {
        if (key.size != QREC_RKEY_LEN ||
            memcmp(key.data, env->id, QUEUE_ID_LEN) != 0)
            break;
        if (add_rcpt(env, &cap, &data) < 0)
            goto out;
    }
    if (ret != 0 && ret != DB_NOTFOUND) {
        errno = queue_db_error("read recipients", env->id, ret);
        goto out;
    }
    rc = 0;
out:
    c->close(c);
    free(key.data);
    free(data.data);
    return rc;
}

static void free_cleanup(const void *data, size_t len, void *extra)
{
    (void)len;
    (void)extra;
    free((void *)data);
}

static int load_inline_body(struct queue *q, const struct queue_envelope *env,
                            const struct qmsg_info *info, struct evbuffer *out)
{
    if (info->size >= UINT32_MAX - info->hlen)
        return corrupt(env->id, "message");
    DBT data;
    /* One byte more than expected tells a record with trailing junk. */
    int ret = msg_partial(q, env->id, info->hlen, (u_int32_t)info->size + 1,
                          &data);
    if (ret != 0) {
        errno = queue_db_error("read body", env->id, ret);
        return -1;
    }
    if (data.size != info->size) {
        free(data.data);
        return corrupt(env->id, "message");
    }
    if (data.size == 0) {
        free(data.data);
        return 0;
    }
    /* Hand the buffer over instead of copying it. */
    if (evbuffer_add_reference(out, data.data, data.size, free_cleanup,
                               NULL) < 0) {
        free(data.data);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

static int load_body(struct queue *q, const struct queue_envelope *env,
                     const struct qmsg_info *info, struct evbuffer *out)
{
    if (info->kind == QBODY_INLINE)
        return load_inline_body(q, env, info, out);
    if (qbody_read(q->bodyfd, env->id, info->size, out) == 0)
        return 0;
    log_err("%s: cannot read body file: %s", env->id, strerror(errno));
    return -1;
}

int queue_get(struct queue *q, const char *id, struct queue_envelope *env,
              struct evbuffer *body)
{
    struct qmsg_info info;
    memset(env, 0, sizeof *env);
    if (!qid_valid(id))
        return 1;
    int rc = load_header(q, id, env, &info);
    if (rc != 0)
        return rc;
    if (load_rcpts(q, env) < 0 || (body && load_body(q, env, &info, body) < 0)) {
        int err = errno;
        queue_envelope_free(env);
        errno = err;
        return -1;
    }
    return 0;
}

/* Moves KEY (malloc'd, size 0 at the start) to the next message key. The
 * search key is the previous key plus a NUL byte: the smallest key after
 * it, whatever its length. 0, 1 at the end, -1 on error. */
static int next_key(struct queue *q, DBT *key)
{
    u_int32_t op = DB_FIRST;
    if (key->size > 0) {
        uint8_t *k = realloc(key->data, key->size + 1);
        if (!k)
            return -1;
        k[key->size++] = 0;
        key->data = k;
        op = DB_SET_RANGE;
    }
    DBC *c;
    int ret = q->msgs->cursor(q->msgs, NULL, &c, 0);
    if (ret != 0) {
        errno = queue_db_error("cursor", NULL, ret);
        return -1;
    }
    DBT data = { .flags = DB_DBT_MALLOC | DB_DBT_PARTIAL };
    ret = c->get(c, key, &data, op);
    c->close(c);
    free(data.data);
    if (ret == DB_NOTFOUND)
        return 1;
    if (ret != 0) {
        errno = queue_db_error("walk", NULL, ret);
        return -1;
    }
    return 0;
}

/* One message of the walk: FN's result, or 0 after a bad record (logged,
 * and remembered in *BAD so the walk goes on but reports it). */
static int walk_one(struct queue *q, const DBT *key, queue_walk_fn fn,
                    void *arg, bool *bad)
{
    char id[QUEUE_ID_LEN + 1];
    if (key->size != QUEUE_ID_LEN) {
        log_err("queue: message key of %u bytes skipped", key->size);
        *bad = true;
        return 0;
    }
    memcpy(id, key->data, QUEUE_ID_LEN);
    id[QUEUE_ID_LEN] = '\0';
    struct queue_envelope env;
    int rc = queue_get(q, id, &env, NULL);
    if (rc != 0) {
        *bad |= rc < 0 || !qid_valid(id);
        return 0;                /* rc 1: removed meanwhile */
    }
    rc = fn(&env, arg);
    queue_envelope_free(&env);
    return rc;
}

int queue_walk(struct queue *q, queue_walk_fn fn, void *arg)
{
    DBT key = { .flags = DB_DBT_REALLOC };
    bool bad = false;
    int rc;
    while ((rc = next_key(q, &key)) == 0) {
        int stop = walk_one(q, &key, fn, arg, &bad);
        if (stop != 0) {
            free(key.data);
            return stop;
        }
    }
    free(key.data);
    if (rc < 0)
        return -1;
    return bad ? -1 : 0;
}

/* The key after which a resumed walk starts: AFTER_ID itself (next_key then
 * looks for the smallest key above it, so AFTER_ID need not exist any more). */
static int walk_start(DBT *key, const char *after_id)
{
    size_t len = strlen(after_id);
    if (len == 0)
        return 0;
    if (!(key->data = malloc(len)))
        return -1;
    memcpy(key->data, after_id, len);
    key->size = (u_int32_t)len;
    return 0;
}

struct walk_count {
    queue_walk_fn fn;
    void *arg;
    size_t calls;
};

static int walk_count_cb(const struct queue_envelope *env, void *arg)
{
    struct walk_count *w = arg;
    w->calls++;
    return w->fn(env, w->arg);
}

/* MAX counts the calls of FN, not keys: bad records and messages removed
 * meanwhile are passed over in the same call, so a caller that resumes from
 * the last id FN saw always makes progress. Bad records are logged (by
 * walk_one) and do not end the walk or change its result. */
int queue_walk_from(struct queue *q, const char *after_id, size_t max,
                    queue_walk_fn fn, void *arg)
{
    DBT key = { .flags = DB_DBT_REALLOC };
    struct walk_count w = { fn, arg, 0 };
    bool bad = false;
    int rc = 0;
    if (max == 0)
        return QUEUE_WALK_MORE;
    if (after_id && walk_start(&key, after_id) < 0)
        return -1;
    while (w.calls < max && (rc = next_key(q, &key)) == 0) {
        int stop = walk_one(q, &key, walk_count_cb, &w, &bad);
        if (stop != 0) {
            free(key.data);
            return stop;
        }
    }
    free(key.data);
    if (rc < 0)
        return -1;
    return rc == 0 ? QUEUE_WALK_MORE : 0;
}
