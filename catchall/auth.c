/* Mailbox logins. A wrong guess costs the guesser time: each failure from
 * an address doubles the wait before the answer (0.5 s up to 8 s), and
 * after MAX_FAILURES in FAILURE_WINDOW the address is refused unchecked
 * until the window has passed. */
#include "auth.h"

#include <crypt.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

#include <openssl/crypto.h>

#include "log.h"

#define MAX_FAILURES 10
#define FAILURE_WINDOW 600
#define BASE_DELAY_MS 500
#define MAX_DELAY_MS 8000
#define BLOCKED_DELAY_MS 1000
#define TABLE_SIZE 1024
#define TABLE_SWEEP 4096

/* Checked when the name is unknown, so that the answer takes as long as
 * for a known name (no user enumeration by timing). */
static const char dummy_hash[] =
    "$6$bmxdummysalt$0Dl0yZmJ0QqKp4mW2cN0QbYhQ0tq8v9bH0n3r0eX7b6I1bq9oXq0Q9yNfBqj0m1uS0s3dV2W2kS0xJ7S5Qd0.";

struct failure {
    struct failure *next;
    char ip[48];
    unsigned count;
    time_t first;
};

static struct failure *table[TABLE_SIZE];
static size_t nentries;

static unsigned ip_hash(const char *ip)
{
    unsigned h = 2166136261u;    /* FNV-1a */
    for (; *ip; ip++)
        h = (h ^ (unsigned char)*ip) * 16777619u;
    return h % TABLE_SIZE;
}

static void sweep(time_t now)
{
    for (size_t b = 0; b < TABLE_SIZE; b++) {
        struct failure **p = &table[b];
        while (*p != NULL) {
            if (now - (*p)->first < FAILURE_WINDOW) {
                p = &(*p)->next;
                continue;
            }
            struct failure *dead = *p;
            *p = dead->next;
            free(dead);
            nentries--;
        }
    }
}

static struct failure **find(const char *ip)
{
    struct failure **p = &table[ip_hash(ip)];
    while (*p != NULL && strcmp((*p)->ip, ip) != 0)
        p = &(*p)->next;
    return p;
}

/* The failure record of IP, current (an expired window starts over). */
static struct failure *lookup(const char *ip, time_t now)
{
    struct failure *f = *find(ip);
    if (f != NULL && now - f->first >= FAILURE_WINDOW) {
        f->count = 0;
        f->first = now;
    }
    return f;
}

static unsigned record_failure(const char *ip, time_t now)
{
    struct failure *f = lookup(ip, now);
    if (f == NULL) {
        if (nentries >= TABLE_SWEEP)
            sweep(now);
        f = calloc(1, sizeof *f);
        if (f == NULL)
            return MAX_FAILURES;
        strncpy(f->ip, ip, sizeof f->ip - 1);
        f->first = now;
        struct failure **p = find(ip);
        *p = f;
        nentries++;
    }
    return ++f->count;
}

static void forget(const char *ip)
{
    struct failure **p = find(ip);
    if (*p == NULL)
        return;
    struct failure *dead = *p;
    *p = dead->next;
    free(dead);
    nentries--;
}

static unsigned delay_for(unsigned failures)
{
    unsigned ms = BASE_DELAY_MS;
    for (unsigned i = 1; i < failures && ms < MAX_DELAY_MS; i++)
        ms *= 2;
    return ms < MAX_DELAY_MS ? ms : MAX_DELAY_MS;
}

static bool password_ok(const char *hash, const char *pass)
{
    struct crypt_data data;
    memset(&data, 0, sizeof data);
    const char *h = hash != NULL ? hash : dummy_hash;
    const char *out = crypt_r(pass, h, &data);
    if (out == NULL || out[0] == '*' || hash == NULL)
        return false;
    size_t n = strlen(h);
    return strlen(out) == n && CRYPTO_memcmp(out, h, n) == 0;
}

enum auth_result auth_login(const struct bmx_config *cfg, const char *proto, const char *ip,
                            const char *user, const char *pass,
                            const struct bmx_mailbox **mb, unsigned *delay_ms)
{
    time_t now = time(NULL);
    *mb = NULL;
    *delay_ms = 0;
    const struct failure *f = lookup(ip, now);
    if (f != NULL && f->count >= MAX_FAILURES) {
        /* Unchecked, so nothing is learnt by waiting: answer soon and
         * free the connection slot. */
        *delay_ms = BLOCKED_DELAY_MS;
        log_warn("%s: login refused: client=%s, too many failures (%u in %ds)",
                 proto, ip, f->count, FAILURE_WINDOW);
        return AUTH_BLOCKED;
    }
    const struct bmx_mailbox *m = config_find_mailbox(cfg, user);
    if (password_ok(m != NULL ? m->password : NULL, pass)) {
        forget(ip);
        *mb = m;
        return AUTH_OK;
    }
    unsigned n = record_failure(ip, now);
    *delay_ms = delay_for(n);
    log_warn("%s: login failed: mailbox=%.64s, client=%s, failures=%u%s", proto, user, ip, n,
             m == NULL ? " (no such mailbox)" : "");
    return AUTH_FAIL;
}

/* The decoded response may or may not end in NUL bytes (base64 padding
 * decoded by EVP_DecodeBlock gives up to two), so the fields are copied
 * out and terminated here. Static storage: the loop is single-threaded and
 * the caller uses the strings at once. */
bool auth_plain_split(char *buf, size_t len, const char **user, const char **pass)
{
    static char ubuf[256], pbuf[1024];
    const char *end = buf + len;
    const char *authz = buf;
    const char *authc = memchr(authz, '\0', len);
    if (authc == NULL)
        return false;
    authc++;
    const char *pw = memchr(authc, '\0', (size_t)(end - authc));
    if (pw == NULL)
        return false;
    pw++;
    const char *pend = memchr(pw, '\0', (size_t)(end - pw));
    if (pend == NULL)
        pend = end;
    for (const char *t = pend; t < end; t++)
        if (*t != '\0')
            return false;
    size_t ulen = (size_t)(pw - 1 - authc), plen = (size_t)(pend - pw), zlen = (size_t)(authc - 1 - authz);
    if (ulen == 0 || ulen >= sizeof ubuf || plen >= sizeof pbuf)
        return false;
    if (zlen != 0 && (zlen != ulen || memcmp(authz, authc, ulen) != 0))
        return false;
    memcpy(ubuf, authc, ulen);
    ubuf[ulen] = '\0';
    memcpy(pbuf, pw, plen);
    pbuf[plen] = '\0';
    *user = ubuf;
    *pass = pbuf;
    return true;
}
