/* qfill: test and benchmark helper that puts N messages straight into a
 * STOPPED daemon's queue, with the queue's own code (queue_open, the record
 * encoders of queue_record.c, the ids of queue_id.c, the databases and the
 * schedule index of queue_bdb.c), many messages per transaction, so that a
 * queue of a million messages takes seconds instead of an SMTP intake of
 * several minutes.
 *
 *   qfill [-b BATCH] [-s SIZE] [-d DELAY] [-w SPREAD] [-a ATTEMPTS]
 *         [-f SENDER] [-t RCPT] SPOOL N
 *
 * Each message is what an SMTP intake of a SIZE-byte message stores (one
 * recipient, body inline, our Received line first), except its recipient:
 * it is DEFERRED with ATTEMPTS attempts and a last error, and its next
 * attempt is DELAY seconds from now (spread over SPREAD more seconds in id
 * order): mail that has waited out a primary's outage for a while, which
 * the scheduler does not touch until then. Defaults: BATCH 1000 messages per
 * transaction, SIZE 400, DELAY 3600, SPREAD 3600, ATTEMPTS 1,
 * a@b.test -> user@example.test.
 *
 * Transactions commit without a sync; the log is flushed and the queue
 * checkpointed every 100,000 messages and at the end (queue_close), so that
 * a clean stop is what the daemon finds. Prints
 * "stored=N seconds=S rate=R/s" on success.
 * Exit status: 0 ok, 1 a write failed (what was committed stays), 2 usage,
 * open or not enough free space. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "queue_private.h"

#define CHECKPOINT_EVERY 100000UL

struct fill {
    struct queue *q;
    unsigned long n, batch;
    size_t size;
    long delay, spread;
    uint32_t attempts;
    const char *sender, *rcpt;
    int64_t now;
    uint8_t *rec;                /* one message record, rewritten each time */
    size_t hlen, reclen;
    size_t rcvd_off, msgid_off;  /* where the id goes in the body */
    struct queue_envelope env;
    struct queue_rcpt r;
};

static int usage(void)
{
    fprintf(stderr, "usage: qfill [-b BATCH] [-s SIZE] [-d DELAY] [-w SPREAD] "
                    "[-a ATTEMPTS] [-f SENDER] [-t RCPT] SPOOL N\n");
    return 2;
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_ulong(const char *s, unsigned long *v)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *v = x;
    return 0;
}

/* The body as the SMTP side stores it: our Received line, the headers
 * smtp-source sends, filler lines up to SIZE bytes, CRLF line ends. The
 * Message-ID (same length for every id) is patched in per message. */
#define MSGID_TAG "@qfill.bench>\r\n"
static size_t build_body(uint8_t *out, size_t size, size_t *rcvd_off,
                         size_t *msgid_off)
{
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "Received: from localhost (unknown [127.0.0.1])\r\n"
                     "\tby mx2.example.test (backupmx) with ESMTP id %.*s\r\n"
                     "\tfor <user@example.test>; Sat, 28 Nov 2026 12:00:00 +0000\r\n"
                     "From: <a@b.test>\r\nTo: <user@example.test>\r\n"
                     "Subject: queue scale filler\r\n"
                     "Message-ID: <%.*s" MSGID_TAG "\r\n",
                     QUEUE_ID_LEN, "0000000000000000", QUEUE_ID_LEN,
                     "0000000000000000");
    size_t len = (size_t)n;
    if (len > size)
        size = len;
    memcpy(out, head, len);
    *rcvd_off = (size_t)(strstr(head, "ESMTP id ") - head) + 9;
    *msgid_off = (size_t)(strstr(head, "Message-ID: <") - head) + 13;
    while (len + 2 < size) {
        size_t line = size - len - 2 > 76 ? 76 : size - len - 2;
        memset(out + len, 'x', line);
        len += line;
        memcpy(out + len, "\r\n", 2);
        len += 2;
    }
    return len;
}

static int setup(struct fill *f)
{
    f->env.sender = (char *)f->sender;
    f->env.helo = "localhost";
    f->env.client_addr = "127.0.0.1";
    f->env.client_name = "unknown";
    f->env.arrival = f->now;
    f->env.nrcpt = 1;
    f->env.rcpt = &f->r;
    f->r.addr = (char *)f->rcpt;
    f->r.state = RCPT_DEFERRED;
    f->r.attempts = f->attempts;
    f->r.last_error = f->attempts ? "connect to 127.0.0.1: Connection refused" : NULL;
    f->hlen = qrec_msg_hlen(&f->env);
    if (f->hlen == 0)
        return -1;
    size_t cap = f->size + 1024;
    f->rec = malloc(f->hlen + cap);
    if (!f->rec)
        return -1;
    size_t blen = build_body(f->rec + f->hlen, f->size, &f->rcvd_off,
                             &f->msgid_off);
    f->env.size = blen;
    struct qmsg_info info = { .kind = QBODY_INLINE, .hlen = (uint32_t)f->hlen,
                              .size = blen, .nrcpt = 1 };
    qrec_msg_put_header(f->rec, f->hlen, &f->env, &info);
    f->reclen = f->hlen + blen;
    return 0;
}

/* One message into TXN: the record (id patched into the body's Received and
 * Message-ID) and its recipient, which the schedule index follows. */
static int put_one(struct fill *f, DB_TXN *txn, unsigned long i)
{
    struct queue *q = f->q;
    char id[QUEUE_ID_LEN + 1];
    queue_new_id(q, id);
    uint8_t *body = f->rec + f->hlen;
    memcpy(body + f->rcvd_off, id, QUEUE_ID_LEN);
    memcpy(body + f->msgid_off, id, QUEUE_ID_LEN);
    DBT key = { .data = id, .size = QUEUE_ID_LEN };
    DBT data = { .data = f->rec, .size = (u_int32_t)f->reclen };
    int ret = q->msgs->put(q->msgs, txn, &key, &data, DB_NOOVERWRITE);
    if (ret != 0) {
        queue_db_error("message", id, ret);
        return -1;
    }
    f->r.next_attempt = f->now + f->delay +
        (f->n ? (int64_t)((double)i * (double)f->spread / (double)f->n) : 0);
    size_t len;
    uint8_t *rrec = qrec_rcpt_encode(&f->r, &len);
    if (!rrec)
        return -1;
    uint8_t k[QREC_RKEY_LEN];
    qrec_rcpt_key(k, id, 0);
    DBT rkey = { .data = k, .size = sizeof k };
    DBT rdata = { .data = rrec, .size = (u_int32_t)len };
    ret = q->rcpts->put(q->rcpts, txn, &rkey, &rdata, DB_NOOVERWRITE);
    free(rrec);
    if (ret != 0) {
        queue_db_error("recipient", id, ret);
        return -1;
    }
    return 0;
}

static int fill_batch(struct fill *f, unsigned long from, unsigned long count)
{
    DB_TXN *txn;
    int ret = f->q->env->txn_begin(f->q->env, NULL, &txn, 0);
    if (ret != 0) {
        queue_db_error("txn_begin", NULL, ret);
        return -1;
    }
    for (unsigned long i = 0; i < count; i++)
        if (put_one(f, txn, from + i) < 0) {
            txn->abort(txn);
            return -1;
        }
    ret = txn->commit(txn, DB_TXN_NOSYNC);
    if (ret != 0) {
        queue_db_error("commit", NULL, ret);
        return -1;
    }
    return 0;
}

/* Twice the records (database pages plus log until the next checkpoint)
 * and the queue's own reserve. */
static int check_space(const char *spool, unsigned long n, size_t reclen)
{
    struct statvfs sv;
    if (statvfs(spool, &sv) < 0) {
        fprintf(stderr, "qfill: %s: %s\n", spool, strerror(errno));
        return -1;
    }
    unsigned long long avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
    unsigned long long need = (unsigned long long)n * (reclen + 160) * 2 +
                              ((unsigned long long)256 << 20);
    if (avail < need) {
        fprintf(stderr, "qfill: %s: %llu MB free, %llu MB needed\n", spool,
                avail >> 20, need >> 20);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct fill f = { .batch = 1000, .size = 400, .delay = 3600, .spread = 3600,
                      .attempts = 1, .sender = "a@b.test",
                      .rcpt = "user@example.test" };
    unsigned long v;
    int c;
    while ((c = getopt(argc, argv, "b:s:d:w:a:f:t:")) != -1) {
        if (c == 'f' || c == 't') {
            *(c == 'f' ? &f.sender : &f.rcpt) = optarg;
            continue;
        }
        if (parse_ulong(optarg, &v) < 0)
            return usage();
        switch (c) {
        case 'b': f.batch = v ? v : 1; break;
        case 's': f.size = v > (64u << 10) ? (64u << 10) : v; break;
        case 'd': f.delay = (long)v; break;
        case 'w': f.spread = (long)v; break;
        case 'a': f.attempts = (uint32_t)v; break;
        default: return usage();
        }
    }
    if (argc - optind != 2 || parse_ulong(argv[optind + 1], &f.n) < 0)
        return usage();
    const char *spool = argv[optind];
    log_init("qfill", true, false);
    f.now = (int64_t)time(NULL);
    if (setup(&f) < 0) {
        fprintf(stderr, "qfill: out of memory\n");
        return 2;
    }
    if (check_space(spool, f.n, f.reclen) < 0)
        return 2;
    struct queue_opts opts = { .readonly = false };
    f.q = queue_open(spool, &opts);
    if (!f.q)
        return 2;
    double t0 = now_mono();
    unsigned long done = 0, since_ckp = 0;
    int rc = 0;
    while (done < f.n) {
        unsigned long k = f.n - done < f.batch ? f.n - done : f.batch;
        if (fill_batch(&f, done, k) < 0) {
            rc = 1;
            break;
        }
        done += k;
        since_ckp += k;
        if (since_ckp >= CHECKPOINT_EVERY && done < f.n) {
            int ret = f.q->env->txn_checkpoint(f.q->env, 0, 0, 0);
            if (ret != 0) {
                queue_db_error("checkpoint", NULL, ret);
                rc = 1;
                break;
            }
            since_ckp = 0;
        }
    }
    queue_close(f.q);            /* log flush + checkpoint: a clean stop */
    double secs = now_mono() - t0;
    printf("stored=%lu seconds=%.2f rate=%.0f/s\n", done, secs,
           secs > 0 ? (double)done / secs : 0.0);
    free(f.rec);
    return rc;
}
