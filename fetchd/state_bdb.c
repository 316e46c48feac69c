/* Berkeley DB 5.3 store of delivered message ids.
 *
 * One environment in the state directory (DB_INIT_TXN|LOG|LOCK|MPOOL,
 * recovery at open, log files removed once a checkpoint no longer needs
 * them), one btree "delivered.db". Key: ACCOUNT '\0' ID. Value: "D" for a
 * message that is done, or "P" followed by the NUL-terminated recipients
 * already delivered to. Every put is its own transaction, committed with
 * DB_TXN_WRITE_NOSYNC: the log record is written to the file (so it
 * survives the death of fetchd, kill -9 included) but not synced, which
 * would cost a device flush per message. state_flush() syncs the log once
 * for a whole batch, and account.c calls it before it tells the server to
 * delete anything: a record is on disk before its message is deleted. A
 * crash of fetchd before a commit can only lead to a second delivery of
 * that one message; a crash of the machine before the flush, to a second
 * delivery of the batch's messages delivered so far; never to a loss. */
#include "state_bdb.h"

#include <db.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "log.h"

#define STATE_LOG_FILE (4u << 20)
#define STATE_LOG_BUFFER (256u << 10)

struct state {
    DB_ENV *env;
    DB *db;
    char err[256];
};

const char *state_error(const struct state *st)
{
    return st->err;
}

static void set_err(struct state *st, const char *what, int rc)
{
    snprintf(st->err, sizeof st->err, "%s: %s", what, db_strerror(rc));
}

/* Berkeley DB's own words (a full disk: "write: No space left on device",
 * then a panic) go to the log like every other line, not raw to stderr. */
static void bdb_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
    (void)env;
    (void)pfx;
    log_err("state: bdb: %s", msg);
}

/* Berkeley DB meets a full disk badly: recovery zeroes the rest of the log
 * file, fails half-way and reports "DB_RUNRECOVERY: Fatal error, run
 * database recovery", which is neither true nor helpful (and leaks). A run
 * that could not record its deliveries must not start anyway, so it is
 * refused up front with the real reason: room for a log file and its
 * buffer is the least a run needs. */
static int check_room(const char *dir, char *err, size_t errlen)
{
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0)
        return 0;                /* unknown: the open will say */
    unsigned long long avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
    if (avail >= STATE_LOG_FILE + STATE_LOG_BUFFER)
        return 0;
    snprintf(err, errlen, "cannot open the state database in %s: only %llu KB free on "
             "its filesystem, %u KB needed", dir, avail >> 10,
             (STATE_LOG_FILE + STATE_LOG_BUFFER) >> 10);
    return -1;
}

struct state *state_open(const char *dir, char *err, size_t errlen)
{
    if (check_room(dir, err, errlen) != 0)
        return NULL;
    struct state *st = calloc(1, sizeof *st);
    if (st == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = db_env_create(&st->env, 0);
    if (rc != 0)
        goto fail_env;
    st->env->set_errcall(st->env, bdb_errcall);
    st->env->set_cachesize(st->env, 0, 4u << 20, 1);
    st->env->set_lg_bsize(st->env, STATE_LOG_BUFFER);
    st->env->set_lg_max(st->env, STATE_LOG_FILE);
    st->env->log_set_config(st->env, DB_LOG_AUTO_REMOVE, 1);
    rc = st->env->open(st->env, dir,
                       DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK | DB_INIT_MPOOL
                           | DB_RECOVER | DB_PRIVATE, 0600);
    if (rc != 0)
        goto fail_env;
    rc = db_create(&st->db, st->env, 0);
    if (rc != 0)
        goto fail_env;
    rc = st->db->open(st->db, NULL, "delivered.db", NULL, DB_BTREE,
                      DB_CREATE | DB_AUTO_COMMIT, 0600);
    if (rc != 0)
        goto fail_env;
    return st;
fail_env:
    snprintf(err, errlen, "cannot open the state database in %s: %s", dir, db_strerror(rc));
    state_close(st);
    return NULL;
}

void state_close(struct state *st)
{
    if (st == NULL)
        return;
    if (st->db != NULL)
        st->db->close(st->db, 0);
    if (st->env != NULL) {
        st->env->txn_checkpoint(st->env, 0, 0, 0);
        st->env->close(st->env, 0);
    }
    free(st);
}

void state_checkpoint(struct state *st)
{
    st->env->txn_checkpoint(st->env, 0, 0, 0);
}

/* ACCOUNT '\0' ID, malloc'd. */
static char *make_key(const char *account, const char *id, size_t *len)
{
    size_t a = strlen(account), i = strlen(id);
    char *k = malloc(a + 1 + i);
    if (k == NULL)
        return NULL;
    memcpy(k, account, a + 1);
    memcpy(k + a + 1, id, i);
    *len = a + 1 + i;
    return k;
}

void state_rec_free(struct state_rec *rec)
{
    for (size_t i = 0; i < rec->nrcpts; i++)
        free(rec->rcpts[i]);
    free(rec->rcpts);
    rec->rcpts = NULL;
    rec->nrcpts = 0;
}

static int decode(const char *v, size_t len, struct state_rec *rec)
{
    *rec = (struct state_rec){ 0 };
    if (len == 0)
        return 0;
    if (v[0] == 'D') {
        rec->done = true;
        return 0;
    }
    size_t n = 0;
    for (size_t i = 1; i < len; i++)
        n += v[i] == '\0';
    rec->rcpts = calloc(n ? n : 1, sizeof *rec->rcpts);
    if (rec->rcpts == NULL)
        return -1;
    for (size_t i = 1; i < len && rec->nrcpts < n;) {
        size_t l = strnlen(v + i, len - i);
        rec->rcpts[rec->nrcpts] = strndup(v + i, l);
        if (rec->rcpts[rec->nrcpts] == NULL)
            return -1;
        rec->nrcpts++;
        i += l + 1;
    }
    return 0;
}

int state_get(struct state *st, const char *account, const char *id, struct state_rec *rec)
{
    size_t klen;
    char *k = make_key(account, id, &klen);
    if (k == NULL)
        return -1;
    DBT key = { .data = k, .size = (u_int32_t)klen };
    DBT val = { .flags = DB_DBT_MALLOC };
    int rc = st->db->get(st->db, NULL, &key, &val, 0);
    free(k);
    if (rc == DB_NOTFOUND)
        return 0;
    if (rc != 0) {
        set_err(st, "reading the state", rc);
        return -1;
    }
    int r = decode(val.data, val.size, rec);
    free(val.data);
    return r == 0 ? 1 : -1;
}

int state_put(struct state *st, const char *account, const char *id, bool done,
              char *const *rcpts, size_t nrcpts)
{
    size_t klen, vlen = 1;
    for (size_t i = 0; !done && i < nrcpts; i++)
        vlen += strlen(rcpts[i]) + 1;
    char *k = make_key(account, id, &klen), *v = malloc(vlen);
    if (k == NULL || v == NULL) {
        free(k);
        free(v);
        snprintf(st->err, sizeof st->err, "out of memory");
        return -1;
    }
    v[0] = done ? 'D' : 'P';
    for (size_t i = 0, o = 1; !done && i < nrcpts; i++) {
        size_t l = strlen(rcpts[i]) + 1;
        memcpy(v + o, rcpts[i], l);
        o += l;
    }
    DBT key = { .data = k, .size = (u_int32_t)klen };
    DBT val = { .data = v, .size = (u_int32_t)vlen };
    DB_TXN *txn = NULL;
    int rc = st->env->txn_begin(st->env, NULL, &txn, 0);
    if (rc == 0) {
        rc = st->db->put(st->db, txn, &key, &val, 0);
        if (rc == 0)
            rc = txn->commit(txn, DB_TXN_WRITE_NOSYNC);
        else
            txn->abort(txn);
    }
    free(k);
    free(v);
    if (rc != 0) {
        set_err(st, "recording a delivery", rc);
        return -1;
    }
    return 0;
}

int state_flush(struct state *st)
{
    int rc = st->env->log_flush(st->env, NULL);
    if (rc != 0) {
        set_err(st, "syncing the state to disk", rc);
        return -1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

long state_prune(struct state *st, const char *account, char *const *ids, size_t nids)
{
    size_t alen = strlen(account) + 1;
    DB_TXN *txn = NULL;
    DBC *cur = NULL;
    long removed = 0;
    int rc = st->env->txn_begin(st->env, NULL, &txn, 0);
    if (rc == 0)
        rc = st->db->cursor(st->db, txn, &cur, 0);
    DBT key = { .data = (void *)account, .size = (u_int32_t)alen, .flags = DB_DBT_MALLOC };
    DBT val = { .flags = DB_DBT_MALLOC };
    int op = DB_SET_RANGE;
    char idbuf[1024];
    while (rc == 0) {
        rc = cur->get(cur, &key, &val, op);
        op = DB_NEXT;
        if (rc != 0)
            break;
        free(val.data);
        val.data = NULL;
        bool mine = key.size >= alen && memcmp(key.data, account, alen) == 0;
        size_t idlen = mine ? key.size - alen : 0;
        if (mine && idlen < sizeof idbuf) {
            memcpy(idbuf, (char *)key.data + alen, idlen);
            idbuf[idlen] = '\0';
        }
        free(key.data);
        key.data = NULL;
        if (!mine)
            break;
        const char *idp = idbuf;
        if (idlen < sizeof idbuf && bsearch(&idp, ids, nids, sizeof *ids, cmp_str) != NULL)
            continue;
        if ((rc = cur->del(cur, 0)) == 0)
            removed++;
    }
    if (rc == DB_NOTFOUND)
        rc = 0;
    if (cur != NULL)
        cur->close(cur);
    if (txn != NULL)
        rc = rc == 0 ? txn->commit(txn, DB_TXN_NOSYNC) : (txn->abort(txn), rc);
    if (rc != 0) {
        set_err(st, "pruning the state", rc);
        return -1;
    }
    return removed;
}
