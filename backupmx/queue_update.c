/* The delivery side of the queue: which recipients are due (the schedule
 * index, so nothing grows with the queue), recording attempt results, and
 * removing messages. Writes commit with DB_TXN_WRITE_NOSYNC: the log
 * records are in the file at once, so a crash of the daemon loses none,
 * and a power loss only those of the last QUEUE_UPDATE_SYNC_MS (the sync
 * timer). A lost update can only make a recipient be tried again, because
 * DONE is written only after the next hop's 250. */
#include "queue_private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define QREC_MSG_FLAGS_OFF 24    /* u32 flags in the message record */

static int64_t sched_time(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return (int64_t)(v ^ (1ULL << 63));
}

static void due_from_pkey(struct queue_due *d, const DBT *pkey, int64_t t)
{
    const uint8_t *k = pkey->data;
    memcpy(d->id, k, QUEUE_ID_LEN);
    d->id[QUEUE_ID_LEN] = '\0';
    d->idx = (uint16_t)((k[QUEUE_ID_LEN] << 8) | k[QUEUE_ID_LEN + 1]);
    d->next_attempt = t;
}

int queue_due(struct queue *q, int64_t now, struct queue_due *out, size_t max)
{
    DBC *c;
    int ret = q->sched->cursor(q->sched, NULL, &c, 0);
    if (ret != 0) {
        queue_db_error("schedule cursor", NULL, ret);
        return -1;
    }
    DBT skey = { .flags = DB_DBT_REALLOC };
    DBT pkey = { .flags = DB_DBT_REALLOC };
    DBT data = { .flags = DB_DBT_REALLOC | DB_DBT_PARTIAL, .dlen = 0 };
    size_t n = 0;
    for (ret = c->pget(c, &skey, &pkey, &data, DB_FIRST); ret == 0 && n < max;
         ret = c->pget(c, &skey, &pkey, &data, DB_NEXT)) {
        if (skey.size != 8 || pkey.size != QREC_RKEY_LEN)
            continue;
        int64_t t = sched_time(skey.data);
        if (t > now)
            break;
        due_from_pkey(&out[n++], &pkey, t);
    }
    c->close(c);
    free(skey.data);
    free(pkey.data);
    free(data.data);
    if (ret != 0 && ret != DB_NOTFOUND && n < max) {
        queue_db_error("schedule scan", NULL, ret);
        return -1;
    }
    return (int)n;
}

/* Deletes the message record and every recipient record of ID in TXN;
 * *BODYFILE tells whether the body was a file of its own (to be removed
 * once the deletion is on disk). */
static int delete_in_txn(struct queue *q, DB_TXN *txn, const char *id, bool *bodyfile)
{
    DBT key = { .data = (void *)id, .size = QUEUE_ID_LEN };
    uint8_t head[2];
    DBT probe = { .data = head, .ulen = sizeof head, .dlen = sizeof head,
                  .flags = DB_DBT_PARTIAL | DB_DBT_USERMEM };
    int ret = q->msgs->get(q->msgs, txn, &key, &probe, DB_RMW);
    if (ret != 0)
        return ret;
    *bodyfile = probe.size < 2 || head[1] != QBODY_INLINE;
    if ((ret = q->msgs->del(q->msgs, txn, &key, 0)) != 0)
        return ret;
    DBC *c;
    if ((ret = q->rcpts->cursor(q->rcpts, txn, &c, 0)) != 0)
        return ret;
    uint8_t k[QREC_RKEY_LEN];
    qrec_rcpt_key(k, id, 0);
    DBT rk = { .data = k, .size = sizeof k, .ulen = sizeof k, .flags = DB_DBT_USERMEM };
    DBT rd = { .flags = DB_DBT_PARTIAL | DB_DBT_USERMEM, .dlen = 0 };
    for (ret = c->get(c, &rk, &rd, DB_SET_RANGE); ret == 0;
         ret = c->get(c, &rk, &rd, DB_NEXT)) {
        if (rk.size != QREC_RKEY_LEN || memcmp(k, id, QUEUE_ID_LEN) != 0)
            break;
        if ((ret = c->del(c, 0)) != 0)
            break;
    }
    c->close(c);
    return ret == DB_NOTFOUND ? 0 : ret;
}

/* True when every recipient of ID (read in TXN) is DONE. */
static int all_done(struct queue *q, DB_TXN *txn, const char *id, bool *done)
{
    DBC *c;
    int ret = q->rcpts->cursor(q->rcpts, txn, &c, 0);
    if (ret != 0)
        return ret;
    uint8_t k[QREC_RKEY_LEN];
    uint8_t head[QREC_RCPT_FIXED];
    qrec_rcpt_key(k, id, 0);
    DBT rk = { .data = k, .size = sizeof k, .ulen = sizeof k, .flags = DB_DBT_USERMEM };
    DBT rd = { .data = head, .ulen = sizeof head, .dlen = sizeof head,
               .flags = DB_DBT_PARTIAL | DB_DBT_USERMEM };
    *done = true;
    for (ret = c->get(c, &rk, &rd, DB_SET_RANGE); ret == 0;
         ret = c->get(c, &rk, &rd, DB_NEXT)) {
        if (rk.size != QREC_RKEY_LEN || memcmp(k, id, QUEUE_ID_LEN) != 0)
            break;
        if (qrec_rcpt_peek_state(head, rd.size) != RCPT_DONE) {
            *done = false;
            break;
        }
    }
    c->close(c);
    return ret == DB_NOTFOUND || ret == 0 ? 0 : ret;
}

static int rewrite_rcpt(struct queue *q, DB_TXN *txn, const char *id,
                        uint16_t idx, const struct queue_rcpt *r)
{
    uint8_t k[QREC_RKEY_LEN];
    qrec_rcpt_key(k, id, idx);
    DBT key = { .data = k, .size = sizeof k };
    DBT data = { .flags = DB_DBT_MALLOC };
    int ret = q->rcpts->get(q->rcpts, txn, &key, &data, DB_RMW);
    if (ret != 0)
        return ret;
    struct queue_rcpt cur;
    if (qrec_rcpt_decode(data.data, data.size, &cur) < 0) {
        free(data.data);
        return EIO;
    }
    free(data.data);
    struct queue_rcpt upd = *r;
    upd.addr = cur.addr;         /* the address and ORCPT never change */
    upd.orcpt = cur.orcpt;
    size_t len;
    uint8_t *rec = qrec_rcpt_encode(&upd, &len);
    qrec_rcpt_free(&cur);
    if (rec == NULL)
        return ENOMEM;
    DBT nd = { .data = rec, .size = (u_int32_t)len };
    ret = q->rcpts->put(q->rcpts, txn, &key, &nd, 0);
    free(rec);
    return ret;
}

/* Runs FN inside one WRITE_NOSYNC transaction; DB_NOTFOUND becomes 1. */
static int in_txn(struct queue *q, const char *what, const char *id,
                  int (*fn)(struct queue *, DB_TXN *, void *), void *arg)
{
    if (q->readonly) {
        errno = EROFS;
        return -1;
    }
    DB_TXN *txn;
    int ret = q->env->txn_begin(q->env, NULL, &txn, 0);
    if (ret == 0) {
        ret = fn(q, txn, arg);
        if (ret != 0)
            txn->abort(txn);
        else if ((ret = txn->commit(txn, DB_TXN_WRITE_NOSYNC)) == 0)
            queue_sync_later(q);
    }
    if (ret == DB_NOTFOUND)
        return 1;
    if (ret != 0) {
        errno = queue_db_error(what, id, ret);
        return -1;
    }
    return 0;
}

/* A body file goes only once the deletion of its record is on disk:
 * removed at commit, a crash before the log flush brings the record back
 * without its body (stuck forever, and most likely delivered already).
 * With no group commit (offline tools) the log is flushed here. */
struct body_gone {
    struct queue *q;
    char id[QUEUE_ID_LEN + 1];
};

static void body_gone_cb(void *arg, int error)
{
    struct body_gone *g = arg;
    if (error == 0)
        qbody_remove(g->q->bodyfd, g->id);
    /* else the file stays: an orphan is swept at the next open */
    free(g);
}

static void remove_body_when_durable(struct queue *q, const char *id)
{
    struct body_gone *g = malloc(sizeof *g);
    if (g == NULL || q->flush_ev == NULL || queue_park_reserve(q) != 0) {
        free(g);
        if (q->env->log_flush(q->env, NULL) == 0)
            qbody_remove(q->bodyfd, id);
        return;
    }
    g->q = q;
    memcpy(g->id, id, QUEUE_ID_LEN);
    g->id[QUEUE_ID_LEN] = '\0';
    queue_park(q, body_gone_cb, g);
}

struct update_args {
    const char *id;
    uint16_t idx;
    const struct queue_rcpt *r;
    bool gone;
    bool bodyfile;
};

static int update_fn(struct queue *q, DB_TXN *txn, void *arg)
{
    struct update_args *a = arg;
    int ret = rewrite_rcpt(q, txn, a->id, a->idx, a->r);
    if (ret != 0 || a->r->state != RCPT_DONE)
        return ret;
    bool done;
    if ((ret = all_done(q, txn, a->id, &done)) != 0 || !done)
        return ret;
    a->gone = true;
    return delete_in_txn(q, txn, a->id, &a->bodyfile);
}

int queue_rcpt_update(struct queue *q, const char *id, uint16_t idx,
                      const struct queue_rcpt *r, bool *gone)
{
    struct update_args a = { id, idx, r, false, false };
    int rc = in_txn(q, "update recipient", id, update_fn, &a);
    if (gone != NULL)
        *gone = rc == 0 && a.gone;
    if (rc == 0 && a.gone && a.bodyfile)
        remove_body_when_durable(q, id);
    return rc;
}

struct flags_args {
    const char *id;
    uint32_t flags;
};

static int flags_fn(struct queue *q, DB_TXN *txn, void *arg)
{
    struct flags_args *a = arg;
    uint8_t be[4] = { (uint8_t)(a->flags >> 24), (uint8_t)(a->flags >> 16),
                      (uint8_t)(a->flags >> 8), (uint8_t)a->flags };
    DBT key = { .data = (void *)a->id, .size = QUEUE_ID_LEN };
    DBT probe = { .flags = DB_DBT_MALLOC | DB_DBT_PARTIAL, .dlen = 1 };
    int ret = q->msgs->get(q->msgs, txn, &key, &probe, DB_RMW);
    free(probe.data);
    if (ret != 0)
        return ret;
    DBT data = { .data = be, .size = 4, .doff = QREC_MSG_FLAGS_OFF, .dlen = 4,
                 .flags = DB_DBT_PARTIAL };
    return q->msgs->put(q->msgs, txn, &key, &data, 0);
}

int queue_set_flags(struct queue *q, const char *id, uint32_t flags)
{
    struct flags_args a = { id, flags };
    return in_txn(q, "set flags", id, flags_fn, &a);
}

struct delete_args {
    const char *id;
    bool bodyfile;
};

static int delete_fn(struct queue *q, DB_TXN *txn, void *arg)
{
    struct delete_args *a = arg;
    return delete_in_txn(q, txn, a->id, &a->bodyfile);
}

int queue_delete(struct queue *q, const char *id)
{
    struct delete_args a = { id, false };
    int rc = in_txn(q, "delete", id, delete_fn, &a);
    if (rc == 0 && a.bodyfile)
        remove_body_when_durable(q, id);
    return rc;
}

/* ---- scans over recipients (flush, hold, release, a destination back up) */

#define SCAN_BATCH 1000          /* records per transaction */

struct scan_args {
    const char *id;              /* NULL = every message */
    queue_rcpt_fn fn;
    void *arg;
    uint8_t last[QREC_RKEY_LEN]; /* resume after this key */
    bool started;
    bool finished;
    size_t changed;
};

static int scan_one(DBC *c, DBT *key, DBT *data, struct scan_args *a)
{
    struct queue_rcpt r;
    if (qrec_rcpt_decode(data->data, data->size, &r) < 0)
        return 0;                /* corrupt: leave it to the readers' reports */
    char id[QUEUE_ID_LEN + 1];
    memcpy(id, key->data, QUEUE_ID_LEN);
    id[QUEUE_ID_LEN] = '\0';
    const uint8_t *k = key->data;
    uint16_t idx = (uint16_t)((k[QUEUE_ID_LEN] << 8) | k[QUEUE_ID_LEN + 1]);
    int ret = 0;
    if (a->fn(id, idx, &r, a->arg)) {
        size_t len;
        uint8_t *rec = qrec_rcpt_encode(&r, &len);
        if (rec == NULL) {
            ret = ENOMEM;
        } else {
            DBT nd = { .data = rec, .size = (u_int32_t)len };
            ret = c->put(c, key, &nd, DB_CURRENT);
            free(rec);
            a->changed++;
        }
    }
    qrec_rcpt_free(&r);
    return ret;
}

static int scan_batch(struct queue *q, DB_TXN *txn, void *arg)
{
    struct scan_args *a = arg;
    DBC *c;
    int ret = q->rcpts->cursor(q->rcpts, txn, &c, 0);
    if (ret != 0)
        return ret;
    DBT key = { .flags = DB_DBT_REALLOC };
    DBT data = { .flags = DB_DBT_REALLOC };
    uint8_t start[QREC_RKEY_LEN];
    if (a->started)
        memcpy(start, a->last, sizeof start);
    else if (a->id != NULL)
        qrec_rcpt_key(start, a->id, 0);
    else
        memset(start, 0, sizeof start);
    key.data = malloc(sizeof start);
    if (key.data == NULL) {
        c->close(c);
        return ENOMEM;
    }
    memcpy(key.data, start, sizeof start);
    key.size = sizeof start;
    size_t n = 0;
    for (ret = c->get(c, &key, &data, DB_SET_RANGE); ret == 0;
         ret = c->get(c, &key, &data, DB_NEXT)) {
        if (key.size != QREC_RKEY_LEN)
            continue;
        if (a->started && memcmp(key.data, a->last, QREC_RKEY_LEN) == 0)
            continue;
        if (a->id != NULL && memcmp(key.data, a->id, QUEUE_ID_LEN) != 0)
            break;
        if ((ret = scan_one(c, &key, &data, a)) != 0)
            break;
        memcpy(a->last, key.data, QREC_RKEY_LEN);
        a->started = true;
        if (++n == SCAN_BATCH)
            break;
    }
    if (ret == DB_NOTFOUND || (ret == 0 && n < SCAN_BATCH))
        a->finished = true;
    if (ret == DB_NOTFOUND)
        ret = 0;
    c->close(c);
    free(key.data);
    free(data.data);
    return ret;
}

int queue_rcpt_scan(struct queue *q, const char *id, queue_rcpt_fn fn, void *arg,
                    size_t *changed)
{
    struct scan_args a = { .id = id, .fn = fn, .arg = arg };
    while (!a.finished) {
        if (in_txn(q, "recipient scan", id, scan_batch, &a) < 0)
            return -1;
    }
    if (changed != NULL)
        *changed = a.changed;
    return 0;
}

struct queue_scan {
    struct scan_args a;
};

struct queue_scan *queue_rcpt_scan_begin(queue_rcpt_fn fn, void *arg)
{
    struct queue_scan *sc = calloc(1, sizeof *sc);
    if (sc != NULL) {
        sc->a.fn = fn;
        sc->a.arg = arg;
    }
    return sc;
}

int queue_rcpt_scan_step(struct queue *q, struct queue_scan *sc, unsigned batches)
{
    for (unsigned i = 0; i < batches && !sc->a.finished; i++)
        if (in_txn(q, "recipient scan", NULL, scan_batch, &sc->a) < 0)
            return -1;
    return sc->a.finished ? 1 : 0;
}

size_t queue_rcpt_scan_changed(const struct queue_scan *sc)
{
    return sc->a.changed;
}

void queue_rcpt_scan_free(struct queue_scan *sc)
{
    free(sc);
}
