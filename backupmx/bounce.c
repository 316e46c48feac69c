/* Delivery status notifications: RFC 3464 reports in an RFC 6522
 * multipart/report, three parts:
 *   1. text/plain (us-ascii)  what happened, for people;
 *   2. message/delivery-status  the per-message and per-recipient fields;
 *   3. text/rfc822-headers  the original's header section (never its body).
 *
 * Every part is built in its own buffer first, so that the boundary can be
 * checked against all of their content before anything is assembled, and
 * OUT is only touched once the whole message is ready. */
#include "bounce.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "queue.h"

#define LINE_MAX_OCTETS 998      /* RFC 5322 2.1.1, without the CRLF */
#define FOLD_WIDTH 78            /* header fields are folded here if they can */
#define TEXT_WIDTH 76            /* the notice is wrapped here */
#define ADDR_MAX 512             /* input octets of an address we look at */
#define DIAG_MAX 4000            /* octets of a diagnostic we keep */
#define NAME_MAX_OCTETS 255      /* host names, HELO, client names */
#define HDR_CAP (64 * 1024)      /* octets of the original we look at */
#define DOMAINS_SHOWN 5          /* in "a backup MX for ..." */

/* ---- a growable string with a sticky error ------------------------------ */

struct str {
    char *p;
    size_t len, cap;
    bool err;
};

static void s_add(struct str *s, const char *p, size_t n)
{
    if (s->err)
        return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *q = realloc(s->p, cap);
        if (q == NULL) {
            s->err = true;
            return;
        }
        s->p = q;
        s->cap = cap;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

static void s_addc(struct str *s, char c) { s_add(s, &c, 1); }
static void s_adds(struct str *s, const char *p) { s_add(s, p, strlen(p)); }

/* "" (never NULL unless out of memory: then err is set). */
static const char *s_get(struct str *s)
{
    if (s->p == NULL)
        s_add(s, "", 0);
    return s->err ? "" : s->p;
}

static void s_reset(struct str *s)
{
    s->len = 0;
    if (s->p)
        s->p[0] = '\0';
}

static void s_free(struct str *s)
{
    free(s->p);
    s->p = NULL;
    s->len = s->cap = 0;
}

/* ---- an evbuffer writer with a sticky error ----------------------------- */

struct w {
    struct evbuffer *b;
    bool err;
};

static void w_add(struct w *w, const char *p, size_t n)
{
    if (!w->err && n > 0 && evbuffer_add(w->b, p, n) != 0)
        w->err = true;
}

static void w_adds(struct w *w, const char *p) { w_add(w, p, strlen(p)); }

/* Appends S (words separated by single spaces, no control characters) to
 * a line where COL octets are already written. Breaks between words before
 * WIDTH when a word does not fit, starting the next line with CONT (" " for
 * header folding, some spaces of indent for the notice); a word that cannot
 * fit on a line of its own under 998 octets is cut there. Returns the
 * column the last line ends at. */
static size_t w_fold(struct w *w, size_t col, const char *s, size_t width,
                     const char *cont)
{
    size_t clen = strlen(cont);
    bool first = true;
    while (*s) {
        while (*s == ' ')
            s++;
        if (*s == '\0')
            break;
        size_t tl = strcspn(s, " ");
        if (!first) {
            if (col + 1 + tl > width && col > clen) {
                w_adds(w, "\r\n");
                w_adds(w, cont);
                col = clen;
            } else {
                w_adds(w, " ");
                col++;
            }
        }
        while (col + tl > LINE_MAX_OCTETS) {
            size_t room = LINE_MAX_OCTETS - col;
            w_add(w, s, room);
            s += room;
            tl -= room;
            w_adds(w, "\r\n");
            w_adds(w, cont);
            col = clen;
        }
        w_add(w, s, tl);
        s += tl;
        col += tl;
        first = false;
    }
    return col;
}

/* "Name: value" folded, with its CRLF. */
static void w_field(struct w *w, const char *name, const char *value)
{
    w_adds(w, name);
    w_adds(w, ":");
    if (*value) {
        w_adds(w, " ");
        w_fold(w, strlen(name) + 2, value, FOLD_WIDTH, " ");
    }
    w_adds(w, "\r\n");
}

/* A paragraph of the notice, wrapped, with its CRLF. */
static void w_para(struct w *w, const char *text, const char *indent)
{
    w_fold(w, 0, text, TEXT_WIDTH, indent);
    w_adds(w, "\r\n");
}

/* ---- cleaning what came from the network -------------------------------- */

static bool is_ctl(unsigned char c) { return c < 0x20 || c == 0x7f; }

static bool has_8bit(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

/* Free text (a reply, a reason, a name): control characters become spaces,
 * runs of spaces one, 8-bit octets '?'; trimmed; at most MAX octets (then
 * "..." ends it). */
static void clean_text(struct str *o, const char *t, size_t max)
{
    bool space = true;           /* drops leading spaces */
    size_t start = o->len;
    for (const unsigned char *p = (const unsigned char *)(t ? t : ""); *p; p++) {
        unsigned char c = *p;
        if (is_ctl(c) || c == ' ') {
            if (!space)
                s_addc(o, ' ');
            space = true;
            continue;
        }
        if (o->len - start >= max) {
            s_adds(o, "...");
            return;
        }
        s_addc(o, c >= 0x80 ? '?' : (char)c);
        space = false;
    }
    if (space && o->len > start && !o->err)
        o->p[--o->len] = '\0';
}

/* One UTF-8 sequence at P (N octets left): its length, *CP its code point
 * (U+FFFD and length 1 for anything malformed). */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned char c = p[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2, v = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, v = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        *cp = 0xfffd;
        return 1;
    }
    if (n < len)
        goto bad;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            goto bad;
        v = (v << 6) | (p[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        goto bad;
    *cp = v;
    return len;
bad:
    *cp = 0xfffd;
    return 1;
}

/* Appends the N octets at A in RFC 6533 utf-8-addr-xtext form: printable
 * ASCII but '\', '+', '=' as is, anything else as \x{HEX}. */
static void addr_xtext(struct str *o, const unsigned char *a, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = utf8_decode(a + i, n - i, &cp);
        if (cp > 0x20 && cp < 0x7f && cp != '\\' && cp != '+' && cp != '=') {
            s_addc(o, (char)cp);
        } else {
            char hex[16];
            snprintf(hex, sizeof hex, "\\x{%02X}", (unsigned)cp);
            s_adds(o, hex);
        }
        i += len;
    }
}

/* Octets of an address worth keeping: no control characters, at most
 * ADDR_MAX of them. */
static void addr_octets(struct str *o, const char *a, size_t n)
{
    for (size_t i = 0; i < n && i < ADDR_MAX; i++)
        if (!is_ctl((unsigned char)a[i]))
            s_addc(o, a[i]);
}

/* An address as a delivery-status value: "rfc822; local@domain", or, when
 * it is not ASCII, "utf-8; " and the \x{HEX} form. */
static void addr_field(struct str *o, const char *a)
{
    struct str raw = {0};
    addr_octets(&raw, a ? a : "", a ? strlen(a) : 0);
    if (raw.err)
        o->err = true;
    const char *r = s_get(&raw);
    if (has_8bit(r)) {
        s_adds(o, "utf-8; ");
        addr_xtext(o, (const unsigned char *)r, raw.len);
    } else {
        s_adds(o, "rfc822; ");
        s_adds(o, r);
    }
    s_free(&raw);
}

/* An address for the notice (US-ASCII): as is, or in the \x{HEX} form. */
static void addr_text(struct str *o, const char *a)
{
    struct str raw = {0};
    addr_octets(&raw, a ? a : "", a ? strlen(a) : 0);
    if (raw.err)
        o->err = true;
    const char *r = s_get(&raw);
    if (has_8bit(r))
        addr_xtext(o, (const unsigned char *)r, raw.len);
    else
        s_adds(o, r);
    s_free(&raw);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The ORCPT parameter as the client gave it ("addr-type;xtext", RFC 3461
 * 4.2) as an Original-Recipient value: the type, "; ", the address with its
 * xtext decoded (RFC 6533 utf-8 addresses are not xtext: kept). Without a
 * type it is taken as a plain rfc822 address. */
static void orcpt_field(struct str *o, const char *orcpt)
{
    const char *semi = strchr(orcpt, ';');
    if (semi == NULL) {
        addr_field(o, orcpt);
        return;
    }
    struct str type = {0}, val = {0};
    for (const char *p = orcpt; p < semi && type.len < 32; p++) {
        char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9') || c == '-')
            s_addc(&type, c);
    }
    const char *t = type.len ? s_get(&type) : "unknown";
    bool utf8 = strcasecmp(t, "utf-8") == 0;
    const char *v = semi + 1;
    while (*v == ' ')
        v++;
    size_t vlen = strlen(v);
    for (size_t i = 0; i < vlen && val.len < ADDR_MAX; i++) {
        int h1, h2;
        char c = v[i];
        if (!utf8 && c == '+' && i + 2 < vlen && (h1 = hexval(v[i + 1])) >= 0 &&
            (h2 = hexval(v[i + 2])) >= 0) {
            c = (char)(h1 * 16 + h2);
            i += 2;
        }
        if (!is_ctl((unsigned char)c))
            s_addc(&val, c);
    }
    const char *d = s_get(&val);
    if (!utf8 && strcasecmp(t, "rfc822") == 0) {
        addr_field(o, d);
    } else {
        s_adds(o, utf8 ? "utf-8" : t);
        s_adds(o, "; ");
        if (has_8bit(d))
            addr_xtext(o, (const unsigned char *)d, val.len);
        else
            s_adds(o, d);
    }
    if (type.err || val.err)
        o->err = true;
    s_free(&type);
    s_free(&val);
}

/* Our host name, an id: letters, digits and a few safe punctuation marks
 * only (they go into Message-ID, From, Reporting-MTA). */
static void clean_token(struct str *o, const char *s, const char *extra,
                        const char *dflt)
{
    size_t start = o->len;
    for (; s && *s && o->len - start < NAME_MAX_OCTETS; s++) {
        char c = *s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9') || strchr(extra, c) != NULL)
            s_addc(o, c);
    }
    if (o->len == start)
        s_adds(o, dflt);
}

/* RFC 5322 date-time, local time with its numeric zone. */
static void fmt_date(int64_t t, char out[64])
{
    static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    /* A time stamp from a damaged record must still give an RFC 5322
     * date: four-digit years only (and no int overflow in tm_year). */
    const int64_t last = 253402300799;        /* 9999-12-31T23:59:59Z */
    time_t tt = (time_t)(t < 0 ? 0 : t > last - 86400 ? last - 86400 : t);
    struct tm tm;
    if (localtime_r(&tt, &tm) == NULL) {
        tt = 0;
        gmtime_r(&tt, &tm);
        tm.tm_gmtoff = 0;
    }
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    snprintf(out, 64, "%s, %d %s %04d %02d:%02d:%02d %c%02ld%02ld",
             wd[tm.tm_wday % 7], tm.tm_mday, mo[tm.tm_mon % 12], tm.tm_year + 1900,
             tm.tm_hour, tm.tm_min, tm.tm_sec, sign, off / 60 % 100, off % 60);
}

/* An RFC 3463 status "class.subject.detail", or DFLT. */
static const char *status_or(const char *st, const char *dflt)
{
    if (st == NULL || (st[0] != '2' && st[0] != '4' && st[0] != '5') || st[1] != '.')
        return dflt;
    const char *p = st + 2;
    for (int part = 0; part < 2; part++) {
        size_t n = strspn(p, "0123456789");
        if (n < 1 || n > 3)
            return dflt;
        p += n;
        if (part == 0 && *p++ != '.')
            return dflt;
    }
    return *p == '\0' ? st : dflt;
}

/* ---- the original's header section -------------------------------------- */

/* Copies ORIG's header section (up to its first empty line; up to HDR_CAP
 * octets when there is none) to W, if not NULL: CR, LF and CRLF all end a
 * line (as mail readers take them) and become CRLF, NULs are dropped, and
 * lines are cut at 998 octets (not inside a UTF-8 sequence). Sets *EIGHT
 * when what is copied has 8-bit octets. Returns the octets copied, or -1
 * when out of memory. */
static long copy_headers(struct w *w, struct evbuffer *orig, bool *eight)
{
    *eight = false;
    size_t total = orig ? evbuffer_get_length(orig) : 0;
    size_t n = total < HDR_CAP ? total : HDR_CAP;
    if (n == 0)
        return 0;
    unsigned char *buf = malloc(n);
    if (buf == NULL)
        return -1;
    if (evbuffer_copyout(orig, buf, n) != (ev_ssize_t)n) {
        free(buf);
        errno = EIO;
        return -1;
    }
    bool complete = n == total;
    long copied = 0;
    char line[LINE_MAX_OCTETS];
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && buf[j] != '\r' && buf[j] != '\n')
            j++;
        size_t end;              /* where the next line starts */
        if (j == n) {
            /* No line end in what we read: the last line of a message
             * that has no body, or a line the cap cut. A cut line is kept
             * when it is cut anyway. */
            if (!complete && j - i < LINE_MAX_OCTETS)
                break;
            end = n;
        } else if (buf[j] == '\r') {
            if (j + 1 == n && !complete)
                break;           /* its LF may be just past the cap */
            end = j + 1 < n && buf[j + 1] == '\n' ? j + 2 : j + 1;
        } else {
            end = j + 1;
        }
        if (j == i)
            break;               /* the empty line: the body follows */
        size_t len = 0;
        for (size_t k = i; k < j && len < LINE_MAX_OCTETS; k++) {
            if (buf[k] == '\0')
                continue;
            line[len++] = (char)buf[k];
        }
        /* Cut before a UTF-8 sequence the limit would split. */
        if (len == LINE_MAX_OCTETS) {
            size_t k = len - 1, back = 0;
            while (k > 0 && back < 3 && ((unsigned char)line[k] & 0xc0) == 0x80)
                k--, back++;
            unsigned char lead = (unsigned char)line[k];
            size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
            if (k + need > len)
                len = k;
        }
        for (size_t k = 0; k < len; k++)
            if ((unsigned char)line[k] >= 0x80)
                *eight = true;
        if (w) {
            w_add(w, line, len);
            w_adds(w, "\r\n");
        }
        copied += (long)len + 2;
        i = end;
    }
    free(buf);
    return copied;
}

/* ---- the parts ----------------------------------------------------------- */

/* "example.com, example.org" from the recipients' domains, or "". */
static void rcpt_domains(struct str *o, const struct bounce_rcpt *r, size_t n)
{
    struct str seen = {0};       /* "\n"-separated, lower-cased */
    size_t shown = 0;
    bool more = false;
    for (size_t i = 0; i < n; i++) {
        const char *at = r[i].addr ? strrchr(r[i].addr, '@') : NULL;
        if (at == NULL || at[1] == '\0')
            continue;
        struct str d = {0};
        addr_text(&d, at + 1);
        for (size_t k = 0; k < d.len; k++)
            if (d.p[k] >= 'A' && d.p[k] <= 'Z')
                d.p[k] = (char)(d.p[k] - 'A' + 'a');
        const char *dom = s_get(&d);
        bool dup = false;
        for (const char *p = seen.p; p && *p;) {
            size_t l = strcspn(p, "\n");
            if (l == d.len && memcmp(p, dom, l) == 0)
                dup = true;
            p += l + (p[l] == '\n');
        }
        if (!dup && *dom) {
            if (shown == DOMAINS_SHOWN) {
                more = true;
            } else {
                if (shown++)
                    s_adds(o, ", ");
                s_adds(o, dom);
                s_adds(&seen, dom);
                s_addc(&seen, '\n');
            }
        }
        if (d.err)
            o->err = true;
        s_free(&d);
    }
    if (more)
        s_adds(o, " and others");
    if (seen.err)
        o->err = true;
    s_free(&seen);
}

static bool is_smtp_reply(const char *d)
{
    return d[0] >= '2' && d[0] <= '5' && d[1] >= '0' && d[1] <= '9' &&
           d[2] >= '0' && d[2] <= '9' && (d[3] == ' ' || d[3] == '-' || d[3] == '\0');
}

static void part_notice(struct w *w, struct str *t, enum bounce_kind kind,
                        const char *host, const struct queue_envelope *env,
                        const struct bounce_rcpt *r, size_t n)
{
    char date[64];
    struct str tmp = {0};

    s_reset(t);
    s_adds(t, "This is the mail system at host ");
    s_adds(t, host);
    rcpt_domains(&tmp, r, n);
    if (tmp.len) {
        s_adds(t, " (a backup MX for ");
        s_adds(t, s_get(&tmp));
        s_adds(t, ").");
    } else {
        s_adds(t, " (a backup MX).");
    }
    w_para(w, s_get(t), "");
    w_adds(w, "\r\n");

    if (kind == BOUNCE_DELAYED) {
        w_para(w, "THIS IS A WARNING ONLY. You do not need to send your message "
                  "again.", "");
        w_adds(w, "\r\n");
        s_reset(t);
        s_adds(t, "Your message has not been delivered yet to the recipients listed "
                  "below. The primary mail servers of their domain did not take it "
                  "so far; this backup server holds it and keeps trying");
        int64_t until = 0;
        for (size_t i = 0; i < n; i++)
            if (r[i].retry_until > until)
                until = r[i].retry_until;
        if (until > 0) {
            fmt_date(until, date);
            s_adds(t, " until ");
            s_adds(t, date);
        }
        s_adds(t, ". If it still cannot be delivered by then, you will be sent "
                  "another notice.");
    } else {
        s_reset(t);
        s_adds(t, "Your message could not be delivered to one or more of its "
                  "recipients. This backup server accepted it on their behalf, "
                  "but handing it on to their mail system has failed for good; "
                  "the details follow.");
    }
    w_para(w, s_get(t), "");
    w_adds(w, "\r\n");
    w_para(w, "If you need help, send this report to the postmaster of this "
              "host. The headers of your message are attached; its text is "
              "not.", "");
    w_adds(w, "\r\n");

    s_reset(t);
    s_adds(t, "Your message");
    s_reset(&tmp);
    clean_token(&tmp, env->id, "", "");
    if (tmp.len) {
        s_adds(t, " (queue ID ");
        s_adds(t, s_get(&tmp));
        s_adds(t, ")");
    }
    if (env->arrival > 0) {
        fmt_date(env->arrival, date);
        s_adds(t, " arrived on ");
        s_adds(t, date);
    }
    if ((env->client_name && *env->client_name) || (env->client_addr && *env->client_addr)) {
        s_adds(t, " from ");
        s_reset(&tmp);
        clean_text(&tmp, env->client_name ? env->client_name : "unknown",
                   NAME_MAX_OCTETS);
        s_adds(t, tmp.len ? s_get(&tmp) : "unknown");
        s_reset(&tmp);
        clean_text(&tmp, env->client_addr, NAME_MAX_OCTETS);
        if (tmp.len) {
            s_adds(t, " [");
            s_adds(t, s_get(&tmp));
            s_adds(t, "]");
        }
    }
    s_adds(t, ".");
    w_para(w, s_get(t), "");
    w_adds(w, "\r\n");

    w_para(w, kind == BOUNCE_DELAYED ? "Recipients still waiting:"
                                     : "Recipients that failed:", "");
    w_adds(w, "\r\n");
    for (size_t i = 0; i < n; i++) {
        s_reset(t);
        s_addc(t, '<');
        addr_text(t, r[i].addr);
        s_adds(t, ">:");
        s_reset(&tmp);
        clean_text(&tmp, r[i].remote_mta, NAME_MAX_OCTETS);
        if (tmp.len) {
            s_adds(t, " host ");
            s_adds(t, s_get(&tmp));
            s_adds(t, " said:");
        }
        s_reset(&tmp);
        clean_text(&tmp, r[i].diagnostic, DIAG_MAX);
        s_addc(t, ' ');
        s_adds(t, tmp.len ? s_get(&tmp)
                          : kind == BOUNCE_DELAYED ? "delivery is being retried"
                                                   : "delivery failed");
        w_para(w, s_get(t), "    ");
        if (i + 1 < n)
            w_adds(w, "\r\n");
    }
    if (tmp.err)
        t->err = true;
    s_free(&tmp);
}

static void part_status(struct w *w, struct str *t, enum bounce_kind kind,
                        const char *host, const struct queue_envelope *env,
                        const struct bounce_rcpt *r, size_t n)
{
    char date[64];

    s_reset(t);
    s_adds(t, "dns; ");
    s_adds(t, host);
    w_field(w, "Reporting-MTA", s_get(t));
    s_reset(t);
    clean_token(t, env->id, "", "");
    if (t->len)
        w_field(w, "X-Backupmx-Queue-ID", s_get(t));
    if (env->client_name && *env->client_name && strcmp(env->client_name, "unknown") != 0) {
        s_reset(t);
        s_adds(t, "dns; ");
        clean_token(t, env->client_name, ".-_", "unknown");
        w_field(w, "Received-From-MTA", s_get(t));
    }
    if (env->arrival > 0) {
        fmt_date(env->arrival, date);
        w_field(w, "Arrival-Date", date);
    }

    for (size_t i = 0; i < n; i++) {
        w_adds(w, "\r\n");
        s_reset(t);
        addr_field(t, r[i].addr);
        w_field(w, "Final-Recipient", s_get(t));
        if (r[i].orcpt && *r[i].orcpt) {
            s_reset(t);
            orcpt_field(t, r[i].orcpt);
            w_field(w, "Original-Recipient", s_get(t));
        }
        w_field(w, "Action", kind == BOUNCE_DELAYED ? "delayed" : "failed");
        w_field(w, "Status",
                status_or(r[i].status, kind == BOUNCE_DELAYED ? "4.0.0" : "5.0.0"));
        s_reset(t);
        clean_text(t, r[i].remote_mta, NAME_MAX_OCTETS);
        if (t->len) {
            char *mta = strdup(s_get(t));
            if (mta == NULL) {
                w->err = true;
                return;
            }
            s_reset(t);
            s_adds(t, "dns; ");
            s_adds(t, mta);
            free(mta);
            w_field(w, "Remote-MTA", s_get(t));
        }
        s_reset(t);
        clean_text(t, r[i].diagnostic, DIAG_MAX);
        if (t->len) {
            char *diag = strdup(s_get(t));
            if (diag == NULL) {
                w->err = true;
                return;
            }
            bool smtp = (r[i].remote_mta && *r[i].remote_mta) || is_smtp_reply(diag);
            s_reset(t);
            s_adds(t, smtp ? "smtp; " : "X-Backupmx; ");
            s_adds(t, diag);
            free(diag);
            w_field(w, "Diagnostic-Code", s_get(t));
        }
        if (r[i].last_attempt > 0) {
            fmt_date(r[i].last_attempt, date);
            w_field(w, "Last-Attempt-Date", date);
        }
        if (kind == BOUNCE_DELAYED && r[i].retry_until > 0) {
            fmt_date(r[i].retry_until, date);
            w_field(w, "Will-Retry-Until", date);
        }
    }
}

/* ---- the boundary -------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

static uint64_t random64(void)
{
    static uint64_t counter;
    uint64_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r)
        return r;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return mix64((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
           mix64(((uint64_t)getpid() << 32) ^ ++counter);
}

static bool occurs_in(struct evbuffer *b, const char *s)
{
    return evbuffer_search(b, s, strlen(s), NULL).pos >= 0;
}

/* "=_bmx_ID_HEX": "=_" cannot occur in base64 or quoted-printable text, the
 * random part makes it unguessable, and it is checked against every part. */
static int make_boundary(char out[80], const char *id, struct evbuffer **parts,
                         size_t nparts)
{
    struct str qid = {0};
    clean_token(&qid, id, "", "x");
    if (qid.err)
        return -1;
    for (int tries = 0; tries < 100; tries++) {
        snprintf(out, 80, "=_bmx_%.24s_%016llx", s_get(&qid),
                 (unsigned long long)random64());
        bool found = false;
        for (size_t i = 0; i < nparts && !found; i++)
            found = occurs_in(parts[i], out);
        if (!found) {
            s_free(&qid);
            return 0;
        }
    }
    s_free(&qid);
    errno = EIO;
    return -1;
}

/* ---- the message ---------------------------------------------------------- */

static void add_part(struct w *w, const char *boundary, const char *headers,
                     struct evbuffer *body)
{
    w_adds(w, "\r\n--");
    w_adds(w, boundary);
    w_adds(w, "\r\n");
    w_adds(w, headers);
    w_adds(w, "\r\n");
    if (!w->err && evbuffer_add_buffer(w->b, body) != 0)
        w->err = true;
}

int bounce_build(struct evbuffer *out, enum bounce_kind kind, const char *hostname,
                 const char *id, const struct queue_envelope *env,
                 const struct bounce_rcpt *rcpts, size_t n, struct evbuffer *orig,
                 int64_t now)
{
    if (env == NULL || n == 0 || rcpts == NULL || env->sender == NULL ||
        env->sender[0] == '\0') {
        errno = EINVAL;
        return -1;
    }
    int rc = -1;
    int err = ENOMEM;
    struct evbuffer *msg = evbuffer_new();
    struct evbuffer *p1 = evbuffer_new();
    struct evbuffer *p2 = evbuffer_new();
    struct evbuffer *p3 = evbuffer_new();
    struct str host = {0}, t = {0};
    struct w w1 = {p1, false}, w2 = {p2, false}, w3 = {p3, false}, wm = {msg, false};
    if (msg == NULL || p1 == NULL || p2 == NULL || p3 == NULL)
        goto out;

    clean_token(&host, hostname, ".-_", "localhost");
    const char *h = s_get(&host);

    part_notice(&w1, &t, kind, h, env, rcpts, n);
    part_status(&w2, &t, kind, h, env, rcpts, n);
    bool eight = false;
    long hlen = copy_headers(&w3, orig, &eight);
    if (hlen < 0) {
        err = errno;
        goto out;
    }
    if (host.err || t.err || w1.err || w2.err || w3.err)
        goto out;

    char boundary[80];
    struct evbuffer *parts[] = {p1, p2, p3};
    if (make_boundary(boundary, id, parts, 3) < 0) {
        err = errno;
        goto out;
    }

    char date[64];
    fmt_date(now, date);
    w_field(&wm, "Date", date);
    s_reset(&t);
    s_adds(&t, "MAILER-DAEMON@");
    s_adds(&t, h);
    s_adds(&t, " (Mail Delivery System)");
    w_field(&wm, "From", s_get(&t));
    s_reset(&t);
    s_addc(&t, '<');
    addr_octets(&t, env->sender, strlen(env->sender));
    s_addc(&t, '>');
    w_field(&wm, "To", s_get(&t));
    w_field(&wm, "Subject", kind == BOUNCE_DELAYED ? "Delayed Mail (still being retried)"
                                                   : "Undelivered Mail Returned to Sender");
    s_reset(&t);
    s_addc(&t, '<');
    clean_token(&t, id, ".-_", "dsn");
    s_addc(&t, '@');
    s_adds(&t, h);
    s_addc(&t, '>');
    w_field(&wm, "Message-ID", s_get(&t));
    w_field(&wm, "Auto-Submitted", "auto-replied");
    w_field(&wm, "MIME-Version", "1.0");
    w_adds(&wm, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                "\tboundary=\"");
    w_adds(&wm, boundary);
    w_adds(&wm, "\"\r\n");
    if (eight)
        w_field(&wm, "Content-Transfer-Encoding", "8bit");
    w_adds(&wm, "\r\nThis is a MIME-encapsulated message.\r\n");

    add_part(&wm, boundary,
             "Content-Description: Notification\r\n"
             "Content-Type: text/plain; charset=us-ascii\r\n", p1);
    add_part(&wm, boundary,
             "Content-Description: Delivery report\r\n"
             "Content-Type: message/delivery-status\r\n", p2);
    if (hlen > 0)
        add_part(&wm, boundary,
                 kind == BOUNCE_DELAYED
                     ? (eight ? "Content-Description: Delayed Message Headers\r\n"
                                "Content-Type: text/rfc822-headers\r\n"
                                "Content-Transfer-Encoding: 8bit\r\n"
                              : "Content-Description: Delayed Message Headers\r\n"
                                "Content-Type: text/rfc822-headers\r\n")
                     : (eight ? "Content-Description: Undelivered Message Headers\r\n"
                                "Content-Type: text/rfc822-headers\r\n"
                                "Content-Transfer-Encoding: 8bit\r\n"
                              : "Content-Description: Undelivered Message Headers\r\n"
                                "Content-Type: text/rfc822-headers\r\n"),
                 p3);
    w_adds(&wm, "\r\n--");
    w_adds(&wm, boundary);
    w_adds(&wm, "--\r\n");
    if (t.err || wm.err)
        goto out;
    if (evbuffer_add_buffer(out, msg) != 0)
        goto out;
    rc = 0;
out:
    s_free(&host);
    s_free(&t);
    if (msg)
        evbuffer_free(msg);
    if (p1)
        evbuffer_free(p1);
    if (p2)
        evbuffer_free(p2);
    if (p3)
        evbuffer_free(p3);
    if (rc != 0)
        errno = err;
    return rc;
}

uint32_t bounce_qenv_flags(const struct queue_envelope *env, struct evbuffer *orig)
{
    uint32_t f = 0;
    bool eight = false;
    if (copy_headers(NULL, orig, &eight) > 0 && eight)
        f |= QENV_8BITMIME;
    if (env && has_8bit(env->sender))
        f |= QENV_8BITMIME | QENV_SMTPUTF8;
    return f;
}
