/* Storing a message and the group commit that makes it durable.
 *
 * queue_store() writes the message and all its recipients in ONE
 * transaction committed with DB_TXN_NOSYNC (into the log buffer, no disk
 * wait) and parks the caller's callback. The first store parked in a loop
 * pass activates one event; libevent runs it after the callbacks already
 * active in this pass (the sessions that finished DATA together), and it
 * does one log_flush for all of them before running their callbacks. Under
 * load the batch grows by itself: one disk sync per loop pass, not per
 * message.
 *
 * The group commit itself (the parking and the flush) is queue_flush.c.
 */
#include "queue_private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"

#define QUEUE_MAX_RCPT 65535     /* the key holds a 16-bit index */

/* ---- the transaction ------------------------------------------------------ */

/* True when storing NEED more bytes would leave less than min_free on the
 * spool's filesystem. Checked before every store: it is one cheap syscall,
 * and Berkeley DB reports a full disk late and badly (EIO, a panic). */
static bool spool_full(struct queue *q, size_t need)
{
    struct statvfs sv;
    if (fstatvfs(q->bodyfd, &sv) < 0)
        return false;            /* unknown: let the writes tell */
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    return avail < q->min_free || avail - q->min_free < need;
}

static bool envelope_ok(const struct queue_envelope *env)
{
    if (!qid_valid(env->id) || env->nrcpt == 0 ||
        env->nrcpt > QUEUE_MAX_RCPT || !env->rcpt)
        return false;
    for (size_t i = 0; i < env->nrcpt; i++)
        if (!env->rcpt[i].addr || (unsigned)env->rcpt[i].state > RCPT_DONE)
            return false;
    return true;
}

/* The message record: header, then the body itself when it is inline. */
static uint8_t *message_record(const struct queue_envelope *env,
                               struct evbuffer *body, bool in_file,
                               size_t *len)
{
    size_t hlen = qrec_msg_hlen(env);
    size_t size = evbuffer_get_length(body);
    size_t total = hlen + (in_file ? 0 : size);
    if (hlen == 0) {
        errno = EINVAL;
        return NULL;
    }
    uint8_t *rec = malloc(total);
    if (!rec)
        return NULL;
    struct qmsg_info info = {
        .kind = in_file ? QBODY_FILE : QBODY_INLINE,
        .hlen = (uint32_t)hlen,
        .size = size,
        .nrcpt = (uint32_t)env->nrcpt,
    };
    qrec_msg_put_header(rec, hlen, env, &info);
    if (!in_file && evbuffer_copyout(body, rec + hlen, size) != (ssize_t)size) {
        free(rec);
        errno = EIO;
        return NULL;
    }
    *len = total;
    return rec;
}

static int put_message(struct queue *q, DB_TXN *txn,
                       const struct queue_envelope *env, const uint8_t *rec,
                       size_t len)
{
    DBT key = { .data = (void *)env->id, .size = QUEUE_ID_LEN };
    DBT data = { .data = (void *)rec, .size = (u_int32_t)len };
    int ret = q->msgs->put(q->msgs, txn, &key, &data, DB_NOOVERWRITE);
    return ret == DB_KEYEXIST ? EEXIST : ret;
}

/* Each recipient also lands in the schedule index (same transaction). */
static int put_recipients(struct queue *q, DB_TXN *txn,
                          const struct queue_envelope *env)
{
    for (size_t i = 0; i < env->nrcpt; i++) {
        uint8_t k[QREC_RKEY_LEN];
        size_t len;
        uint8_t *rec = qrec_rcpt_encode(&env->rcpt[i], &len);
        if (!rec)
            return errno;
        qrec_rcpt_key(k, env->id, (uint16_t)i);
        DBT key = { .data = k, .size = sizeof k };
        DBT data = { .data = rec, .size = (u_int32_t)len };
        int ret = q->rcpts->put(q->rcpts, txn, &key, &data, DB_NOOVERWRITE);
        free(rec);
        if (ret != 0)
            return ret;
    }
    return 0;
}

/* One transaction for the message and all its recipients, into the log
 * buffer only: the group flush makes it durable. Returns 0, an errno or a
 * DB_* code. */
static int commit_message(struct queue *q, const struct queue_envelope *env,
                          const uint8_t *rec, size_t len)
{
    DB_TXN *txn;
    int ret = q->env->txn_begin(q->env, NULL, &txn, 0);
    if (ret != 0)
        return ret;
    int err = put_message(q, txn, env, rec, len);
    if (err == 0)
        err = put_recipients(q, txn, env);
    if (err != 0) {
        txn->abort(txn);
        return err;
    }
    return txn->commit(txn, DB_TXN_NOSYNC);  /* aborts itself on failure */
}

int queue_store(struct queue *q, const struct queue_envelope *env,
                struct evbuffer *body, queue_stored_cb cb, void *arg)
{
    if (q->readonly || !q->base || !envelope_ok(env)) {
        errno = q->readonly ? EROFS : EINVAL;
        return -1;
    }
    if (spool_full(q, evbuffer_get_length(body))) {
        log_warn("%s: not queued: less than %llu MB free in %s", env->id,
                 (unsigned long long)(q->min_free >> 20), q->spool);
        errno = ENOSPC;
        return -1;
    }
    if (queue_park_reserve(q) < 0)
        return -1;
    bool in_file = evbuffer_get_length(body) > q->inline_max;
    bool file_made = false;
    size_t len = 0;
    uint8_t *rec = NULL;
    int err = 0;

    /* A large body is on disk before any record can point at it. */
    if (in_file && qbody_write(q->bodyfd, env->id, body) < 0)
        goto fail;
    file_made = in_file;
    if (!(rec = message_record(env, body, in_file, &len)))
        goto fail;
    if ((err = commit_message(q, env, rec, len)) != 0)
        goto fail;
    free(rec);
    q->st.commits++;
    queue_park(q, cb, arg);
    return 0;
fail:
    if (err == 0)
        err = errno;
    if (file_made)
        qbody_remove(q->bodyfd, env->id);
    free(rec);
    log_warn("%s: not queued: %s", env->id, db_strerror(err));
    /* Callers answer 452 to a full disk (quota or not), 451 otherwise. A
     * failing database write on a nearly full disk is a full disk. */
    if (err == EDQUOT || spool_full(q, 0))
        err = ENOSPC;
    errno = err > 0 ? err : EIO;
    return -1;
}
