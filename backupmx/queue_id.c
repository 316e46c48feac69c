/* Queue ids: 16 base32 digits that sort by arrival and stay unique across
 * restarts and crashes (layout in queue_private.h). */
#include "queue_private.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Crockford's digits: no I, L, O, U to misread; ASCII order is value order,
 * so comparing ids as strings compares them as numbers. */
static const char qid_digits[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#define QID_TIME_BITS 52
#define QID_SEQ_BITS 12
#define QID_SEQ_MAX ((1u << QID_SEQ_BITS) - 1)
#define QID_TIME_MAX ((UINT64_C(1) << QID_TIME_BITS) - 1)

static int qid_digit_value(char c)
{
    const char *p = c ? strchr(qid_digits, c) : NULL;
    return p ? (int)(p - qid_digits) : -1;
}

bool qid_valid(const char *s)
{
    for (size_t i = 0; i < QUEUE_ID_LEN; i++)
        if (qid_digit_value(s[i]) < 0)
            return false;
    return s[QUEUE_ID_LEN] == '\0';
}

/* HI holds the top 64 of the 80 bits (time and sequence), LO the salt. */
static void qid_encode(uint64_t hi, uint16_t lo, char id[QUEUE_ID_LEN + 1])
{
    for (int i = QUEUE_ID_LEN - 1; i >= 0; i--) {
        id[i] = qid_digits[lo & 31];
        lo = (uint16_t)((lo >> 5) | ((hi & 31) << 11));
        hi >>= 5;
    }
    id[QUEUE_ID_LEN] = '\0';
}

static uint64_t qid_decode_hi(const char *id)
{
    uint64_t hi = 0;
    /* The first 64 bits are 12 whole digits and the top 4 bits of the
     * 13th. */
    for (int i = 0; i < 12; i++)
        hi = (hi << 5) | (uint64_t)qid_digit_value(id[i]);
    return (hi << 4) | ((uint64_t)qid_digit_value(id[12]) >> 1);
}

static uint64_t qid_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u) &
           QID_TIME_MAX;
}

void qid_gen_init(struct qid_gen *g)
{
    uint16_t salt;
    if (getrandom(&salt, sizeof salt, GRND_NONBLOCK) != (ssize_t)sizeof salt)
        salt = (uint16_t)(getpid() ^ qid_now_us());
    g->last_us = 0;
    g->seq = 0;
    g->salt = salt;
}

void qid_gen_seed(struct qid_gen *g, const char *id)
{
    if (!qid_valid(id))
        return;
    uint64_t hi = qid_decode_hi(id);
    uint64_t us = hi >> QID_SEQ_BITS;
    uint32_t seq = (uint32_t)(hi & QID_SEQ_MAX);
    if (us > g->last_us || (us == g->last_us && seq > g->seq)) {
        g->last_us = us;
        g->seq = seq;
    }
}

void qid_next(struct qid_gen *g, char id[QUEUE_ID_LEN + 1])
{
    uint64_t now = qid_now_us();
    if (now > g->last_us) {
        g->last_us = now;
        g->seq = 0;
    } else if (g->seq < QID_SEQ_MAX) {
        g->seq++;           /* same microsecond, or the clock stepped back */
    } else {
        g->last_us++;       /* borrow from the future rather than repeat */
        g->seq = 0;
    }
    qid_encode((g->last_us << QID_SEQ_BITS) | g->seq, g->salt, id);
}
