/* The recipient verification cache: verify.db, a btree in the queue's
 * environment (opened by queue_bdb.c, daemon only). It is a cache, so
 * writes commit with DB_TXN_NOSYNC and are made durable by whatever flush
 * or checkpoint comes next; losing the last few after a crash costs at most
 * a callout.
 *
 * Record, all integers big-endian (24 bytes):
 *   0  u8  version (1)       4  i32 value
 *   1  u8  reserved[3] (0)   8  i64 stored
 *                           16  i64 expires
 * The key is the caller's string without its NUL. */
#include "queue_private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define QCACHE_VERSION 1
#define QCACHE_REC_LEN 24
#define QCACHE_KEY_MAX 1024      /* far above any address */

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)(v >> 32));
    put_u32(p + 4, (uint32_t)v);
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

static void encode(uint8_t rec[QCACHE_REC_LEN],
                   const struct queue_cache_entry *e)
{
    memset(rec, 0, QCACHE_REC_LEN);
    rec[0] = QCACHE_VERSION;
    put_u32(rec + 4, (uint32_t)e->value);
    put_u64(rec + 8, (uint64_t)e->stored);
    put_u64(rec + 16, (uint64_t)e->expires);
}

static int decode(const DBT *data, struct queue_cache_entry *e)
{
    const uint8_t *p = data->data;
    if (data->size != QCACHE_REC_LEN || p[0] != QCACHE_VERSION)
        return -1;
    e->value = (int32_t)get_u32(p + 4);
    e->stored = (int64_t)get_u64(p + 8);
    e->expires = (int64_t)get_u64(p + 16);
    return 0;
}

/* Fills KEY for the string S; -1 (errno set) when it cannot be a key. */
static int make_key(struct queue *q, const char *s, DBT *key)
{
    if (!q->cache) {
        errno = EROFS;
        return -1;
    }
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > QCACHE_KEY_MAX) {
        errno = EINVAL;
        return -1;
    }
    memset(key, 0, sizeof *key);
    key->data = (void *)s;
    key->size = (u_int32_t)n;
    return 0;
}

int queue_cache_get(struct queue *q, const char *k,
                    struct queue_cache_entry *e)
{
    DBT key;
    uint8_t buf[QCACHE_REC_LEN];
    if (make_key(q, k, &key) < 0)
        return -1;
    DBT data = { .data = buf, .ulen = sizeof buf, .flags = DB_DBT_USERMEM };
    int ret = q->cache->get(q->cache, NULL, &key, &data, 0);
    if (ret == DB_NOTFOUND)
        return 1;
    if (ret == DB_BUFFER_SMALL || (ret == 0 && decode(&data, e) < 0)) {
        log_warn("queue: verify.db: corrupt entry for %s ignored", k);
        return 1;
    }
    if (ret != 0) {
        errno = queue_db_error("verify cache read", NULL, ret);
        return -1;
    }
    return 0;
}

int queue_cache_put(struct queue *q, const char *k,
                    const struct queue_cache_entry *e)
{
    DBT key;
    uint8_t rec[QCACHE_REC_LEN];
    if (make_key(q, k, &key) < 0)
        return -1;
    encode(rec, e);
    DBT data = { .data = rec, .size = sizeof rec };
    DB_TXN *txn;
    int ret = q->env->txn_begin(q->env, NULL, &txn, 0);
    if (ret == 0) {
        ret = q->cache->put(q->cache, txn, &key, &data, 0);
        if (ret != 0)
            txn->abort(txn);
        else
            ret = txn->commit(txn, DB_TXN_NOSYNC);
    }
    if (ret != 0) {
        errno = queue_db_error("verify cache write", NULL, ret);
        return -1;
    }
    return 0;
}

static char *key_dup(const DBT *key)
{
    char *s = malloc((size_t)key->size + 1);
    if (s) {
        memcpy(s, key->data, key->size);
        s[key->size] = '\0';
    }
    return s;
}

/* One transaction: the cursor's page locks are held until it ends, which
 * MAX keeps small. */
long queue_cache_purge(struct queue *q, int64_t now, size_t max,
                       char **resume)
{
    if (!q->cache) {
        errno = EROFS;
        return -1;
    }
    DB_TXN *txn = NULL;
    DBC *c = NULL;
    long removed = 0;
    char *next = NULL;
    int ret = q->env->txn_begin(q->env, NULL, &txn, 0);
    if (ret == 0)
        ret = q->cache->cursor(q->cache, txn, &c, 0);
    DBT key = { 0 }, data = { 0 };
    if (ret == 0 && *resume) {
        key.data = *resume;
        key.size = (u_int32_t)strlen(*resume);
        ret = c->get(c, &key, &data, DB_SET_RANGE);
    } else if (ret == 0) {
        ret = c->get(c, &key, &data, DB_FIRST);
    }
    for (size_t seen = 0; ret == 0; seen++) {
        if (seen == max) {       /* stop here, at the first key not looked at */
            if (!(next = key_dup(&key)))
                ret = ENOMEM;
            break;
        }
        struct queue_cache_entry e;
        if (decode(&data, &e) < 0 || e.expires <= now) {
            ret = c->del(c, 0);
            if (ret != 0)
                break;
            removed++;
        }
        ret = c->get(c, &key, &data, DB_NEXT);
    }
    if (ret == DB_NOTFOUND)
        ret = 0;
    if (c) {
        int r2 = c->close(c);
        if (ret == 0)
            ret = r2;
    }
    if (txn && ret == 0)
        ret = txn->commit(txn, DB_TXN_NOSYNC);
    else if (txn)
        txn->abort(txn);
    if (ret != 0) {
        free(next);
        errno = ret == ENOMEM ? ENOMEM
                              : queue_db_error("verify cache purge", NULL, ret);
        return -1;
    }
    free(*resume);
    *resume = next;
    return removed;
}
