/* Internals of the queue shared by its pieces: queue ids (queue_id.c), the
 * on-disk record encoding (queue_record.c) and large-body spool files
 * (queue_body.c). Only queue_bdb.c and the queue's tests include this. */
#ifndef BMX_QUEUE_PRIVATE_H
#define BMX_QUEUE_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <db.h>

#include "queue.h"

/* ---- queue ids (queue_id.c) ------------------------------------------- */

/* An id is 80 bits written as 16 base32 digits, most significant first:
 * 52 bits of microseconds since the epoch (good until 2112), a 12-bit
 * sequence number for ids made in the same microsecond, and 16 random bits
 * drawn once per process. The generator never goes backwards, so ids sort
 * by arrival; the salt keeps ids from two lives of the daemon apart even
 * when the clock steps back. */
struct qid_gen {
    uint64_t last_us;            /* time part of the last id made */
    uint32_t seq;                /* sequence part of the last id made */
    uint16_t salt;
};

void qid_gen_init(struct qid_gen *g);
/* Makes sure every later id sorts after ID (the newest id on disk). */
void qid_gen_seed(struct qid_gen *g, const char *id);
void qid_next(struct qid_gen *g, char id[QUEUE_ID_LEN + 1]);
/* True when S is exactly QUEUE_ID_LEN digits of our alphabet (so it is
 * also a safe file name). */
bool qid_valid(const char *s);

/* ---- records (queue_record.c) ----------------------------------------- */

#define QREC_VERSION 1

/* Message record, all integers big-endian:
 *   0  u8  version                4  u32 header length H
 *   1  u8  body kind (QBODY_*)    8  i64 arrival
 *   2  u16 reserved (0)          16  u64 body size
 *                                24  u32 flags
 *                                28  u32 number of recipients stored
 *   32 sender, helo, client_addr, client_name as strings (below)
 *   H  the body itself when inline (exactly "body size" bytes), else nothing
 * A string is a u32 length then that many bytes (no NUL inside);
 * length 0xffffffff means NULL. H at a fixed place lets readers fetch only
 * the header (DB_DBT_PARTIAL) when they do not want the body. */
#define QREC_MSG_FIXED 32
#define QREC_MSG_PEEK 1024       /* enough for almost every header */

enum qbody_kind { QBODY_INLINE = 0, QBODY_FILE = 1 };

struct qmsg_info {
    enum qbody_kind kind;
    uint32_t hlen;               /* H */
    uint64_t size;               /* body size */
    uint32_t nrcpt;              /* recipients at store time */
};

/* Size of the header for ENV (H), or 0 when a field is too long. */
size_t qrec_msg_hlen(const struct queue_envelope *env);
/* Writes the H-byte header into OUT. */
void qrec_msg_put_header(uint8_t *out, size_t hlen,
                         const struct queue_envelope *env,
                         const struct qmsg_info *info);
/* Reads H from the first bytes of a record; -1 when they are not ours. */
int qrec_msg_peek_hlen(const uint8_t *p, size_t len, uint32_t *hlen);
/* Decodes the header (the first LEN >= H bytes of a record) into ENV
 * (strings allocated, no recipients) and INFO. -1 when corrupt. */
int qrec_msg_decode_header(const uint8_t *p, size_t len,
                           struct queue_envelope *env, struct qmsg_info *info);

/* Recipient record, all integers big-endian:
 *   0  u8  version      4  u32 attempts
 *   1  u8  state        8  u64 next_attempt XOR 2^63 (so that byte order is
 *   2  u16 reserved (0)        numeric order; bytes 8..15 are the schedule key)
 *   16 address, orcpt, last_error as strings
 * Its key is the queue id followed by the u16 recipient index. */
#define QREC_RCPT_FIXED 16
#define QREC_SCHED_OFF 8
#define QREC_SCHED_LEN 8
#define QREC_RKEY_LEN (QUEUE_ID_LEN + 2)

void qrec_rcpt_key(uint8_t out[QREC_RKEY_LEN], const char *id, uint16_t idx);
/* Encodes R into a malloc'd buffer; NULL with errno set on failure. */
uint8_t *qrec_rcpt_encode(const struct queue_rcpt *r, size_t *len);
/* Decodes a whole recipient record into R (strings allocated); -1 when
 * corrupt. */
int qrec_rcpt_decode(const uint8_t *p, size_t len, struct queue_rcpt *r);
void qrec_rcpt_free(struct queue_rcpt *r);
/* The state byte of an encoded recipient, or -1 when it is not ours. */
int qrec_rcpt_peek_state(const uint8_t *p, size_t len);

/* ---- large bodies in spool files (queue_body.c) ------------------------ */

/* Writes BODY to DIRFD/ID (created exclusively), syncs the data and then
 * the directory. On failure the file is gone and errno says why. */
int qbody_write(int dirfd, const char *id, struct evbuffer *body);
/* Appends DIRFD/ID, which must hold exactly SIZE bytes, to OUT. */
int qbody_read(int dirfd, const char *id, uint64_t size, struct evbuffer *out);
void qbody_remove(int dirfd, const char *id);
/* Removes every body file whose id KNOWN says is not in the queue.
 * KNOWN returns 1 (keep), 0 (orphan) or -1 (cannot tell: keep). Returns the
 * number of files removed, -1 when the directory cannot be read. */
int qbody_sweep(int dirfd, int (*known)(void *arg, const char *id), void *arg);

/* ---- the queue handle (queue_bdb.c opens it, queue_read.c reads) ------- */

struct queue_parked {            /* a store waiting for the group flush */
    queue_stored_cb cb;
    void *arg;
};

struct queue {
    char *spool;
    bool readonly;
    bool opened;                 /* queue_open completed */
    size_t inline_max;
    uint64_t min_free;           /* refuse stores below this much free */
    DB_ENV *env;
    DB *msgs;                    /* messages: id -> envelope (+ body) */
    DB *rcpts;                   /* recipients: id + u16 index -> state */
    DB *sched;                   /* schedule: next_attempt -> rcpts key */
    DB *cache;                   /* verify.db (queue_cache.c); NULL readonly */
    int lockfd;                  /* SPOOL/db/lock, flock'd while open */
    int bodyfd;                  /* SPOOL/body */
    struct qid_gen ids;
    struct event_base *base;
    struct event *flush_ev;      /* group commit, activated on demand */
    struct event *sync_ev;       /* updates' fdatasync, QUEUE_UPDATE_SYNC_MS */
    struct event *ckp_ev;        /* periodic checkpoint */
    struct queue_parked *park;   /* stores committed since the last flush */
    size_t npark, parkcap;
    struct qflusher *flusher;    /* the flush thread (queue_flush.c) */
    bool dirty;                  /* updates written, not yet synced */
    struct queue_stats st;
};

/* Logs a Berkeley DB failure and returns the errno to report for it. */
int queue_db_error(const char *what, const char *id, int ret);

/* Group commit (queue_store.c): set up on queue_attach, torn down (parked
 * callbacks dropped) on queue_close. */
int queue_commit_attach(struct queue *q);
void queue_commit_detach(struct queue *q);
/* Makes room to park one more callback (before the commit, so that
 * parking after it cannot fail), then parks it. */
int queue_park_reserve(struct queue *q);
void queue_park(struct queue *q, queue_stored_cb cb, void *arg);
/* An update was committed with DB_TXN_WRITE_NOSYNC (in the file, so a
 * crash of the daemon keeps it): syncs it within QUEUE_UPDATE_SYNC_MS. */
void queue_sync_later(struct queue *q);

#endif
