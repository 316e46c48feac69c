/* The queue's on-disk records: explicit big-endian encoding with a version
 * byte, and decoders that check every length against the bytes really
 * there, so a damaged record is an error and never a crash. Layouts are in
 * queue_private.h. */
#include "queue_private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define QREC_NULL_STR UINT32_MAX
/* Envelope strings come from SMTP lines; anything near this is not mail. */
#define QREC_MAX_HEADER (1u << 20)

/* ---- writing ------------------------------------------------------------ */

struct qw {
    uint8_t *p;
    size_t off;
};

static void qw_u8(struct qw *w, uint8_t v)
{
    w->p[w->off++] = v;
}

static void qw_u16(struct qw *w, uint16_t v)
{
    qw_u8(w, (uint8_t)(v >> 8));
    qw_u8(w, (uint8_t)v);
}

static void qw_u32(struct qw *w, uint32_t v)
{
    qw_u16(w, (uint16_t)(v >> 16));
    qw_u16(w, (uint16_t)v);
}

static void qw_u64(struct qw *w, uint64_t v)
{
    qw_u32(w, (uint32_t)(v >> 32));
    qw_u32(w, (uint32_t)v);
}

static void qw_str(struct qw *w, const char *s)
{
    if (!s) {
        qw_u32(w, QREC_NULL_STR);
        return;
    }
    size_t n = strlen(s);
    qw_u32(w, (uint32_t)n);
    memcpy(w->p + w->off, s, n);
    w->off += n;
}

static size_t str_size(const char *s)
{
    return 4 + (s ? strlen(s) : 0);
}

/* ---- reading ------------------------------------------------------------ */

struct qr {
    const uint8_t *p;
    size_t len, off;
    bool bad;                    /* sticky: set by the first overrun */
};

static bool qr_has(struct qr *r, size_t n)
{
    if (r->bad || r->off > r->len || r->len - r->off < n)
        r->bad = true;
    return !r->bad;
}

/* Jumps to a fixed offset (over reserved bytes). */
static void qr_seek(struct qr *r, size_t off)
{
    if (off > r->len)
        r->bad = true;
    else
        r->off = off;
}

static uint8_t qr_u8(struct qr *r)
{
    return qr_has(r, 1) ? r->p[r->off++] : 0;
}

static uint16_t qr_u16(struct qr *r)
{
    uint16_t hi = qr_u8(r);
    return (uint16_t)(hi << 8 | qr_u8(r));
}

static uint32_t qr_u32(struct qr *r)
{
    uint32_t hi = qr_u16(r);
    return hi << 16 | qr_u16(r);
}

static uint64_t qr_u64(struct qr *r)
{
    uint64_t hi = qr_u32(r);
    return hi << 32 | qr_u32(r);
}

/* Returns a malloc'd copy, or NULL for a NULL string or on error (then
 * r->bad is set). */
static char *qr_str(struct qr *r)
{
    uint32_t n = qr_u32(r);
    if (r->bad || n == QREC_NULL_STR || !qr_has(r, n))
        return NULL;
    const uint8_t *s = r->p + r->off;
    char *copy = NULL;
    if (memchr(s, '\0', n) || !(copy = malloc((size_t)n + 1))) {
        r->bad = true;
        return NULL;
    }
    memcpy(copy, s, n);
    copy[n] = '\0';
    r->off += n;
    return copy;
}

/* ---- messages ----------------------------------------------------------- */

size_t qrec_msg_hlen(const struct queue_envelope *env)
{
    size_t n = QREC_MSG_FIXED + str_size(env->sender) + str_size(env->helo) +
               str_size(env->client_addr) + str_size(env->client_name);
    return n <= QREC_MAX_HEADER ? n : 0;
}

void qrec_msg_put_header(uint8_t *out, size_t hlen,
                         const struct queue_envelope *env,
                         const struct qmsg_info *info)
{
    struct qw w = { out, 0 };
    qw_u8(&w, QREC_VERSION);
    qw_u8(&w, (uint8_t)info->kind);
    qw_u16(&w, 0);
    qw_u32(&w, (uint32_t)hlen);
    qw_u64(&w, (uint64_t)env->arrival);
    qw_u64(&w, info->size);
    qw_u32(&w, env->flags);
    qw_u32(&w, info->nrcpt);
    qw_str(&w, env->sender);
    qw_str(&w, env->helo);
    qw_str(&w, env->client_addr);
    qw_str(&w, env->client_name);
}

int qrec_msg_peek_hlen(const uint8_t *p, size_t len, uint32_t *hlen)
{
    struct qr r = { p, len, 0, false };
    uint8_t version = qr_u8(&r);
    qr_seek(&r, 4);
    uint32_t h = qr_u32(&r);
    if (r.bad || version != QREC_VERSION || h < QREC_MSG_FIXED ||
        h > QREC_MAX_HEADER)
        return -1;
    *hlen = h;
    return 0;
}

int qrec_msg_decode_header(const uint8_t *p, size_t len,
                           struct queue_envelope *env, struct qmsg_info *info)
{
    uint32_t hlen;
    memset(env, 0, sizeof *env);
    if (qrec_msg_peek_hlen(p, len, &hlen) < 0 || len < hlen)
        return -1;
    /* Read the header only: strings may not run into the body. */
    struct qr r = { p, hlen, 1, false };
    uint8_t kind = qr_u8(&r);
    qr_seek(&r, 8);
    env->arrival = (int64_t)qr_u64(&r);
    info->size = qr_u64(&r);
    env->flags = qr_u32(&r);
    info->nrcpt = qr_u32(&r);
    env->sender = qr_str(&r);
    env->helo = qr_str(&r);
    env->client_addr = qr_str(&r);
    env->client_name = qr_str(&r);
    if (r.bad || r.off != hlen || (kind != QBODY_INLINE && kind != QBODY_FILE))
        goto fail;
    info->kind = (enum qbody_kind)kind;
    info->hlen = hlen;
    env->size = info->size;
    return 0;
fail:
    queue_envelope_free(env);
    return -1;
}

/* ---- recipients --------------------------------------------------------- */

void qrec_rcpt_key(uint8_t out[QREC_RKEY_LEN], const char *id, uint16_t idx)
{
    memcpy(out, id, QUEUE_ID_LEN);
    out[QUEUE_ID_LEN] = (uint8_t)(idx >> 8);
    out[QUEUE_ID_LEN + 1] = (uint8_t)idx;
}

uint8_t *qrec_rcpt_encode(const struct queue_rcpt *rc, size_t *len)
{
    size_t n = QREC_RCPT_FIXED + str_size(rc->addr) + str_size(rc->orcpt) +
               str_size(rc->last_error);
    if (n > QREC_MAX_HEADER) {
        errno = EINVAL;
        return NULL;
    }
    uint8_t *buf = malloc(n);
    if (!buf)
        return NULL;
    struct qw w = { buf, 0 };
    qw_u8(&w, QREC_VERSION);
    qw_u8(&w, (uint8_t)rc->state);
    qw_u16(&w, 0);
    qw_u32(&w, rc->attempts);
    qw_u64(&w, (uint64_t)rc->next_attempt ^ (UINT64_C(1) << 63));
    qw_str(&w, rc->addr);
    qw_str(&w, rc->orcpt);
    qw_str(&w, rc->last_error);
    *len = n;
    return buf;
}

int qrec_rcpt_peek_state(const uint8_t *p, size_t len)
{
    if (len < QREC_RCPT_FIXED || p[0] != QREC_VERSION || p[1] > RCPT_DONE)
        return -1;
    return p[1];
}

int qrec_rcpt_decode(const uint8_t *p, size_t len, struct queue_rcpt *rc)
{
    memset(rc, 0, sizeof *rc);
    int state = qrec_rcpt_peek_state(p, len);
    if (state < 0)
        return -1;
    struct qr r = { p, len, 4, false };
    rc->state = (enum rcpt_state)state;
    rc->attempts = qr_u32(&r);
    rc->next_attempt = (int64_t)(qr_u64(&r) ^ (UINT64_C(1) << 63));
    rc->addr = qr_str(&r);
    rc->orcpt = qr_str(&r);
    rc->last_error = qr_str(&r);
    if (r.bad || r.off != len || !rc->addr) {
        qrec_rcpt_free(rc);
        return -1;
    }
    return 0;
}

void qrec_rcpt_free(struct queue_rcpt *rc)
{
    free(rc->addr);
    free(rc->orcpt);
    free(rc->last_error);
    memset(rc, 0, sizeof *rc);
}

void queue_envelope_free(struct queue_envelope *env)
{
    if (!env)
        return;
    free(env->sender);
    free(env->helo);
    free(env->client_addr);
    free(env->client_name);
    for (size_t i = 0; i < env->nrcpt; i++)
        qrec_rcpt_free(&env->rcpt[i]);
    free(env->rcpt);
    memset(env, 0, sizeof *env);
}
