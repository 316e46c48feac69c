/* The queue's Berkeley DB 5.3 environment: opening (with recovery), the
 * periodic checkpoint, closing. Storing is in queue_store.c, reading in
 * queue_read.c, the record layouts in queue_private.h.
 *
 * Layout of SPOOL (created 0700 when missing):
 *   SPOOL/db/    the environment home: messages.db, recipients.db,
 *                schedule.db, verify.db (queue_cache.c), log.*, __db.*
 *                regions, and "lock"
 *   SPOOL/body/  bodies above inline_max, one file per queue id
 *
 * One process owns the environment and opens it with DB_RECOVER; an
 * exclusive flock on SPOOL/db/lock makes a second owner fail at open
 * instead of recovering the regions from under the first.
 *
 * Read-only mode (tools while the daemon is stopped): we do NOT join the
 * environment, because joining needs the region files to be healthy (after
 * a kill -9 they may hold a dead process's mutexes) and writes to them.
 * Instead we open a private environment (DB_PRIVATE: regions on the heap,
 * nothing created on disk) with only DB_INIT_MPOOL, and open the databases
 * with DB_RDONLY, the way db_dump does. That reads the database files as
 * of the last checkpoint; the daemon checkpoints on close, so after a clean
 * stop they are complete. After a crash they are not (committed data may be
 * only in the log), so a read-only open refuses a spool that was not closed
 * cleanly (the lock file is not empty): start the daemon once, it recovers.
 * A shared flock on SPOOL/db/lock refuses to open while the daemon runs,
 * since its cache may hold pages newer than the files. Tested: only
 * O_RDONLY opens, and it works on a spool the user cannot write. */
#include "queue_private.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

#define QUEUE_INLINE_DEFAULT (128u * 1024)
#define QUEUE_INLINE_LIMIT (16u << 20)   /* the record stays well below 4 GB */
#define QUEUE_CACHE_DEFAULT ((size_t)64 << 20)
/* Message records are 1 KB to 128 KB. On 4 KB pages nearly all of them are
 * overflow chains: a 100 KB body is 26 pages, each fetched, allocated and
 * logged on its own. On 64 KB pages a 4 KB message sits in its leaf and a
 * 100 KB body is two pages: 1,075 -> 1,502 msg/s for 100 KB (20 sessions);
 * 4 KB messages cost the same within the noise of alternating runs (their
 * leaf splits now log 64 KB pages instead of the records' own overflow
 * pages). Only a new file takes the size. */
#define QUEUE_MSG_PAGESIZE (64u << 10)
#define QUEUE_LOG_BUFFER (2u << 20)      /* a busy pass of 4 KB mails fits */
#define QUEUE_LOG_FILE (16u << 20)
#define QUEUE_CKP_SECONDS 30
/* Checkpoint when 8 MB of log or 5 minutes have gone by: bounds recovery
 * time, and lets DB_LOG_AUTO_REMOVE drop old log files. */
#define QUEUE_CKP_KBYTES (8 * 1024)
#define QUEUE_CKP_MINUTES 5

int queue_db_error(const char *what, const char *id, int ret)
{
    if (id)
        log_err("%s: %s: %s", id, what, db_strerror(ret));
    else
        log_err("queue: %s: %s", what, db_strerror(ret));
    if (ret == EDQUOT)
        return ENOSPC;           /* callers answer 452 to both */
    return ret > 0 ? ret : EIO;  /* DB_* codes are negative */
}

static void bdb_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
    (void)env;
    (void)pfx;
    log_err("queue: bdb: %s", msg);
}

static void bdb_msgcall(const DB_ENV *env, const char *msg)
{
    (void)env;
    log_info("queue: bdb: %s", msg);
}

static char *spool_path(const struct queue *q, const char *sub)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", q->spool, sub) < 0)
        return NULL;
    return p;
}

/* mkdir that accepts an existing directory; read-only never creates. */
static int make_dir(const struct queue *q, const char *path)
{
    if (q->readonly || mkdir(path, 0700) == 0 || errno == EEXIST)
        return 0;
    log_err("queue: mkdir %s: %s", path, strerror(errno));
    return -1;
}

static int spool_dirs(struct queue *q)
{
    char *db = spool_path(q, "db"), *body = spool_path(q, "body");
    int rc = -1;
    if (!db || !body) {
        log_err("queue: %s: out of memory", q->spool);
        goto out;
    }
    if (make_dir(q, q->spool) < 0 || make_dir(q, db) < 0 ||
        make_dir(q, body) < 0)
        goto out;
    q->bodyfd = open(body, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (q->bodyfd < 0) {
        log_err("queue: open %s: %s", body, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    free(db);
    free(body);
    return rc;
}

/* The lock file also says whether the owner closed cleanly: it holds the
 * owner's pid while open and is emptied by a clean close. Read-only opens
 * need that, since they see only what the last checkpoint wrote. */
static int mark_dirty(struct queue *q)
{
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(q->lockfd, 0) < 0 || pwrite(q->lockfd, pid, (size_t)n, 0) != n ||
        fdatasync(q->lockfd) < 0) {
        log_err("queue: %s/db/lock: %s", q->spool, strerror(errno));
        return -1;
    }
    return 0;
}

static void mark_clean(struct queue *q)
{
    if (ftruncate(q->lockfd, 0) < 0 || fdatasync(q->lockfd) < 0)
        log_warn("queue: %s/db/lock: %s", q->spool, strerror(errno));
}

static int check_clean(struct queue *q)
{
    struct stat st;
    if (fstat(q->lockfd, &st) < 0 || st.st_size == 0)
        return 0;
    log_err("queue: %s was not closed cleanly: start the daemon once to "
            "recover it before reading it offline", q->spool);
    return -1;
}

static int spool_lock(struct queue *q)
{
    char *path = spool_path(q, "db/lock");
    int rc = -1;
    if (!path) {
        log_err("queue: %s: out of memory", q->spool);
        return -1;
    }
    int flags = q->readonly ? O_RDONLY : O_RDWR | O_CREAT;
    q->lockfd = open(path, flags | O_CLOEXEC, 0600);
    if (q->lockfd < 0) {
        log_err("queue: open %s: %s", path, strerror(errno));
        goto out;
    }
    if (flock(q->lockfd, (q->readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
        log_err("queue: %s is in use by another process%s", q->spool,
                q->readonly ? " (stop the daemon or ask it over its control "
                              "socket)" : "");
        goto out;
    }
    rc = q->readonly ? check_clean(q) : mark_dirty(q);
out:
    free(path);
    return rc;
}

static int env_configure(struct queue *q, size_t cache)
{
    DB_ENV *e = q->env;
    e->set_errcall(e, bdb_errcall);
    e->set_msgcall(e, bdb_msgcall);
    int ret = e->set_cachesize(e, (u_int32_t)(cache >> 30),
                               (u_int32_t)(cache & ((1u << 30) - 1)), 1);
    if (ret == 0 && !q->readonly)
        ret = e->set_lg_bsize(e, QUEUE_LOG_BUFFER);
    if (ret == 0 && !q->readonly)
        ret = e->set_lg_max(e, QUEUE_LOG_FILE);
    /* Region files are written whole when created, so a spool too full for
     * them fails the open with ENOSPC instead of a SIGBUS on first touch;
     * reserve_regions() covers their growth. */
    if (ret == 0 && !q->readonly)
        ret = e->set_flags(e, DB_REGION_INIT, 1);
    /* Log files go once a checkpoint no longer needs them; we give up
     * catastrophic recovery from archived logs, which a queue never does. */
    if (ret == 0 && !q->readonly)
        ret = e->log_set_config(e, DB_LOG_AUTO_REMOVE, 1);
    if (ret != 0)
        queue_db_error("environment setup", NULL, ret);
    return ret == 0 ? 0 : -1;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int env_open(struct queue *q, size_t cache)
{
    int ret = db_env_create(&q->env, 0);
    if (ret != 0) {
        q->env = NULL;
        queue_db_error("db_env_create", NULL, ret);
        return -1;
    }
    if (env_configure(q, cache) < 0)
        return -1;
    u_int32_t flags = q->readonly
        ? DB_CREATE | DB_PRIVATE | DB_INIT_MPOOL
        : DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK |
          DB_INIT_MPOOL | DB_RECOVER;
    char *home = spool_path(q, "db");
    if (!home) {
        log_err("queue: %s: out of memory", q->spool);
        return -1;
    }
    double t0 = now_seconds();
    ret = q->env->open(q->env, home, flags, 0600);
    if (ret != 0)
        queue_db_error("environment open", NULL, ret);
    else if (!q->readonly)
        log_info("queue: opened %s (recovery took %.3fs)", home,
                 now_seconds() - t0);
    free(home);
    return ret == 0 ? 0 : -1;
}

/* Berkeley DB maps each region file (__db.NNN) at its largest size but
 * writes only its last page, at creation and whenever it grows: the rest is
 * holes. Touching a hole when the filesystem is full is a SIGBUS, not an
 * error, so a full spool used to kill the daemon. The blocks of every
 * mapped region are therefore allocated now; a spool without room for them
 * fails here, at start, with a message. KEEP_SIZE: a handle joining the
 * environment (the flusher) checks the primary region's file size. */
static int reserve_region(const char *path, uint64_t len)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        log_err("queue: open %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)len);
    int err = errno;
    close(fd);
    if (rc == 0 || err == EOPNOTSUPP)
        return 0;                /* no fallocate here: nothing to gain */
    log_err("queue: cannot reserve %llu KB for %s: %s",
            (unsigned long long)(len >> 10), path, strerror(err));
    return -1;
}

/* The mappings are learnt from /proc/self/maps: Berkeley DB does not say
 * how large a region may grow. */
static int reserve_regions(struct queue *q)
{
    char *home = spool_path(q, "db");
    char *real = home ? realpath(home, NULL) : NULL;
    FILE *f = real ? fopen("/proc/self/maps", "re") : NULL;
    int rc = real ? 0 : -1;
    if (real == NULL)
        log_err("queue: %s/db: %s", q->spool, strerror(errno));
    size_t hlen = real ? strlen(real) : 0;
    char line[4096 + 128];
    while (f != NULL && rc == 0 && fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        int off = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &off) < 2 || off == 0)
            continue;
        char *path = line + off;
        path[strcspn(path, "\n")] = '\0';
        if (strncmp(path, real, hlen) == 0 && strncmp(path + hlen, "/__db.", 6) == 0)
            rc = reserve_region(path, hi - lo);
    }
    if (f != NULL)
        fclose(f);
    free(real);
    free(home);
    return rc;
}

static int db_open_one(struct queue *q, DB **dbp, const char *file,
                       u_int32_t dbflags, u_int32_t pagesize)
{
    int ret = db_create(dbp, q->env, 0);
    if (ret != 0) {
        *dbp = NULL;
        return -queue_db_error(file, NULL, ret);
    }
    DB *db = *dbp;               /* closed by queue_close even if open fails */
    if (dbflags)
        ret = db->set_flags(db, dbflags);
    if (ret == 0 && pagesize)
        ret = db->set_pagesize(db, pagesize);
    u_int32_t oflags = q->readonly ? DB_RDONLY : DB_CREATE | DB_AUTO_COMMIT;
    if (ret == 0)
        ret = db->open(db, NULL, file, NULL, DB_BTREE, oflags, 0600);
    if (ret != 0)
        return -queue_db_error(file, NULL, ret);
    return 0;
}

/* The schedule index: the recipient's next attempt as 8 big-endian bytes
 * (stored order-preserving in the record, so no copy is needed). Held and
 * delivered recipients are not indexed: the scheduler never sees them. */
static int sched_key_cb(DB *sec, const DBT *pkey, const DBT *pdata, DBT *skey)
{
    (void)sec;
    (void)pkey;
    int state = qrec_rcpt_peek_state(pdata->data, pdata->size);
    if (state < 0 || state == RCPT_HELD || state == RCPT_DONE)
        return DB_DONOTINDEX;
    memset(skey, 0, sizeof *skey);
    skey->data = (uint8_t *)pdata->data + QREC_SCHED_OFF;
    skey->size = QREC_SCHED_LEN;
    return 0;
}

static int dbs_open(struct queue *q)
{
    if (db_open_one(q, &q->msgs, "messages.db", 0, QUEUE_MSG_PAGESIZE) < 0 ||
        db_open_one(q, &q->rcpts, "recipients.db", 0, 0) < 0 ||
        /* Duplicates sorted by their data, the recipient key: equal times
         * come out in queue id order. */
        db_open_one(q, &q->sched, "schedule.db", DB_DUP | DB_DUPSORT, 0) < 0)
        return -1;
    /* DB_CREATE rebuilds the index if schedule.db was lost. */
    int ret = q->rcpts->associate(q->rcpts, NULL, q->sched, sched_key_cb,
                                  q->readonly ? 0 : DB_CREATE);
    if (ret != 0)
        return -queue_db_error("schedule index", NULL, ret);
    /* The recipient verification cache: the daemon's only. */
    if (!q->readonly && db_open_one(q, &q->cache, "verify.db", 0, 0) < 0)
        return -1;
    return 0;
}

/* New ids must sort after every id on disk even if the clock went back. */
static int seed_ids(struct queue *q)
{
    DBC *c;
    int ret = q->msgs->cursor(q->msgs, NULL, &c, 0);
    if (ret != 0)
        return -queue_db_error("cursor", NULL, ret);
    DBT key = { .flags = DB_DBT_MALLOC };
    DBT data = { .flags = DB_DBT_MALLOC | DB_DBT_PARTIAL };
    ret = c->get(c, &key, &data, DB_LAST);
    c->close(c);
    if (ret == 0 && key.size == QUEUE_ID_LEN) {
        char id[QUEUE_ID_LEN + 1];
        memcpy(id, key.data, QUEUE_ID_LEN);
        id[QUEUE_ID_LEN] = '\0';
        qid_gen_seed(&q->ids, id);
    }
    free(key.data);
    free(data.data);
    if (ret != 0 && ret != DB_NOTFOUND)
        return -queue_db_error("last message", NULL, ret);
    return 0;
}

static int message_known_cb(void *arg, const char *id)
{
    struct queue *q = arg;
    DBT key = { .data = (void *)id, .size = QUEUE_ID_LEN };
    int ret = q->msgs->exists(q->msgs, NULL, &key, 0);
    if (ret == DB_NOTFOUND)
        return 0;
    if (ret != 0)
        queue_db_error("lookup", id, ret);
    return 1;                    /* on error keep the file */
}

struct queue *queue_open(const char *spool, const struct queue_opts *opts)
{
    struct queue *q = calloc(1, sizeof *q);
    if (!q || !(q->spool = strdup(spool))) {
        log_err("queue: %s: out of memory", spool);
        free(q);
        return NULL;
    }
    q->lockfd = q->bodyfd = -1;
    q->readonly = opts && opts->readonly;
    q->inline_max = opts && opts->inline_max ? opts->inline_max
                                             : QUEUE_INLINE_DEFAULT;
    if (q->inline_max > QUEUE_INLINE_LIMIT)
        q->inline_max = QUEUE_INLINE_LIMIT;
    size_t cache = opts && opts->cache_bytes ? opts->cache_bytes
                                             : QUEUE_CACHE_DEFAULT;
    /* Room for a checkpoint to write back the whole cache and for the log
     * to move on to a new file. */
    q->min_free = opts && opts->min_free ? opts->min_free
                                         : cache + 2 * (uint64_t)QUEUE_LOG_FILE;
    qid_gen_init(&q->ids);
    if (spool_dirs(q) < 0 || spool_lock(q) < 0 || env_open(q, cache) < 0 ||
        (!q->readonly && reserve_regions(q) < 0) || dbs_open(q) < 0)
        goto fail;
    if (!q->readonly && seed_ids(q) < 0)
        goto fail;
    /* Orphans: bodies written for stores that never committed. */
    if (!q->readonly && qbody_sweep(q->bodyfd, message_known_cb, q) < 0) {
        log_err("queue: %s/body: %s", q->spool, strerror(errno));
        goto fail;
    }
    q->opened = true;
    return q;
fail:
    queue_close(q);
    return NULL;
}

static void checkpoint_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct queue *q = arg;
    int ret = q->env->txn_checkpoint(q->env, QUEUE_CKP_KBYTES,
                                     QUEUE_CKP_MINUTES, 0);
    if (ret != 0)
        queue_db_error("checkpoint", NULL, ret);
}

int queue_attach(struct queue *q, struct event_base *base)
{
    if (q->readonly || q->base) {
        errno = q->readonly ? EROFS : EBUSY;
        return -1;
    }
    struct timeval every = { QUEUE_CKP_SECONDS, 0 };
    q->base = base;
    q->ckp_ev = event_new(base, -1, EV_PERSIST, checkpoint_cb, q);
    if (!q->ckp_ev || event_add(q->ckp_ev, &every) < 0 ||
        queue_commit_attach(q) < 0)
        goto fail;
    return 0;
fail:
    log_err("queue: cannot attach to the event loop");
    queue_commit_detach(q);
    if (q->ckp_ev)
        event_free(q->ckp_ev);
    q->ckp_ev = NULL;
    q->base = NULL;
    errno = ENOMEM;
    return -1;
}

void queue_new_id(struct queue *q, char id[QUEUE_ID_LEN + 1])
{
    qid_next(&q->ids, id);
}

void queue_get_stats(const struct queue *q, struct queue_stats *st)
{
    *st = q->st;
}

static int db_close(DB **db)
{
    int ret = *db ? (*db)->close(*db, 0) : 0;
    if (ret != 0)
        queue_db_error("close", NULL, ret);
    *db = NULL;
    return ret != 0;
}

/* A clean close leaves the database files complete (checkpoint), so the
 * next open recovers nothing and read-only tools see everything. Returns
 * the number of failures. */
static int env_close(struct queue *q)
{
    int bad = 0;
    if (!q->env)
        return 1;
    if (!q->readonly && q->msgs) {
        int ret = q->env->log_flush(q->env, NULL);
        if (ret == 0)
            ret = q->env->txn_checkpoint(q->env, 0, 0, 0);
        if (ret != 0)
            bad += queue_db_error("final checkpoint", NULL, ret) != 0;
    }
    bad += db_close(&q->cache);
    bad += db_close(&q->sched);  /* the secondary before its primary */
    bad += db_close(&q->rcpts);
    bad += db_close(&q->msgs);
    int ret = q->env->close(q->env, 0);
    if (ret != 0)
        bad += queue_db_error("environment close", NULL, ret) != 0;
    q->env = NULL;
    return bad;
}

void queue_close(struct queue *q)
{
    if (!q)
        return;
    /* Parked callbacks are dropped, not called: their owners may already be
     * gone. The flush below still makes their messages durable. */
    if (q->npark)
        log_warn("queue: closing with %zu stores not yet acknowledged",
                 q->npark);
    queue_commit_detach(q);
    if (q->ckp_ev)
        event_free(q->ckp_ev);
    if (env_close(q) == 0 && q->opened && !q->readonly)
        mark_clean(q);
    if (q->bodyfd >= 0)
        close(q->bodyfd);
    if (q->lockfd >= 0)
        close(q->lockfd);        /* releases the flock */
    free(q->spool);
    free(q);
}
