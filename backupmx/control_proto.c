/* The control protocol's pieces (request parsing, data framing) and the
 * queue reports, shared by the daemon's control socket and bmxq. The report
 * functions only append text to an evbuffer: the daemon frames it for the
 * socket, bmxq writes it to stdout. */
#include "control_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>

#include "scheduler.h"

/* ---- the protocol ------------------------------------------------------- */

static bool arg_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] <= ' ' || (unsigned char)s[n] >= 0x7f)
            return false;
    return n > 0 && n <= CTL_ARG_MAX;
}

int ctl_request_parse(char *line, struct ctl_request *req)
{
    memset(req, 0, sizeof *req);
    if (strlen(line) > CTL_LINE_MAX)
        return -1;
    char *p = line;
    char *sp = strchr(p, ' ');
    if (sp)
        *sp = '\0';
    if (!arg_ok(p))
        return -1;
    req->verb = p;
    while (sp) {
        p = sp + 1;
        sp = strchr(p, ' ');
        if (sp)
            *sp = '\0';
        if (req->argc == CTL_ARGS_MAX || !arg_ok(p))
            return -1;
        req->argv[req->argc++] = p;
    }
    return 0;
}

void ctl_frame(struct evbuffer *out, struct evbuffer *text, bool final)
{
    for (;;) {
        size_t eol = 0;
        struct evbuffer_ptr pos = evbuffer_search_eol(text, NULL, &eol,
                                                      EVBUFFER_EOL_LF);
        if (pos.pos < 0)
            break;
        evbuffer_add(out, "|", 1);
        evbuffer_remove_buffer(text, out, (size_t)pos.pos + 1);
    }
    if (final && evbuffer_get_length(text) > 0) {
        evbuffer_add(out, "+", 1);
        evbuffer_add_buffer(out, text);
        evbuffer_add(out, "\n", 1);
    }
}

/* ---- strings -------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at P (1 to 4; NUL-terminated string),
 * or 0 when P does not start one: no overlong forms, no surrogates, nothing
 * above U+10FFFF. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];
    unsigned char lo = 0x80, hi = 0xbf;
    size_t n;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

void ctl_json_string(struct evbuffer *out, const char *s)
{
    if (!s) {
        evbuffer_add(out, "null", 4);
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    evbuffer_add(out, "\"", 1);
    while (*p) {
        size_t run = 0;          /* plain bytes are copied in runs */
        while (p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' &&
               p[run] != '\\')
            run++;
        if (run) {
            evbuffer_add(out, p, run);
            p += run;
            continue;
        }
        size_t n = utf8_len(p);
        if (n == 0) {
            evbuffer_add(out, "\\ufffd", 6);
            p++;
        } else if (n > 1) {
            evbuffer_add(out, p, n);
            p += n;
        } else {
            switch (*p) {
            case '"': evbuffer_add(out, "\\\"", 2); break;
            case '\\': evbuffer_add(out, "\\\\", 2); break;
            case '\n': evbuffer_add(out, "\\n", 2); break;
            case '\r': evbuffer_add(out, "\\r", 2); break;
            case '\t': evbuffer_add(out, "\\t", 2); break;
            default: evbuffer_add_printf(out, "\\u%04x", *p); break;
            }
            p++;
        }
    }
    evbuffer_add(out, "\"", 1);
}

void ctl_text_string(struct evbuffer *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        size_t n = utf8_len(p);
        if (n == 0 || *p < 0x20 || *p == 0x7f) {
            evbuffer_add_printf(out, "\\x%02x", *p);
            p++;
        } else {
            evbuffer_add(out, p, n);
            p += n;
        }
    }
}

bool ctl_is_id(const char *s)
{
    static const char digits[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    size_t n = 0;
    for (; s[n]; n++)
        if (n == QUEUE_ID_LEN || !strchr(digits, s[n]))
            return false;
    return n == QUEUE_ID_LEN;
}

bool ctl_domain_match(const char *addr, const char *domain)
{
    const char *at = strrchr(addr, '@');
    if (!at || !*domain)
        return false;
    size_t n = strlen(domain);
    if (domain[n - 1] == '.')
        n--;
    return strlen(at + 1) == n && strncasecmp(at + 1, domain, n) == 0;
}

const char *ctl_state_name(enum rcpt_state st)
{
    switch (st) {
    case RCPT_DEFERRED: return "deferred";
    case RCPT_ACTIVE: return "active";
    case RCPT_HELD: return "held";
    case RCPT_DONE: return "done";
    }
    return "unknown";
}

/* ---- shared report bits ---------------------------------------------------- */

static enum rcpt_state rcpt_state(report_active_fn active, void *arg,
                                  const struct queue_envelope *env, size_t i)
{
    enum rcpt_state st = env->rcpt[i].state;
    if (st != RCPT_DONE && active && active(arg, env->id, (uint16_t)i))
        return RCPT_ACTIVE;
    return st;
}

static void add_time(struct evbuffer *out, int64_t t, bool year)
{
    char buf[64];
    time_t tt = (time_t)t;
    struct tm tm;
    if (!localtime_r(&tt, &tm) ||
        !strftime(buf, sizeof buf, year ? "%a %b %d %H:%M:%S %Y"
                                        : "%a %b %d %H:%M:%S", &tm))
        snprintf(buf, sizeof buf, "@%lld", (long long)t);
    evbuffer_add_printf(out, "%s", buf);
}

/* "3d 4h", "2h 5m", "5m 3s", "12s". */
static void add_duration(struct evbuffer *out, int64_t secs)
{
    if (secs < 0)
        secs = 0;
    long long d = secs / 86400, h = secs / 3600 % 24, m = secs / 60 % 60,
              s = secs % 60;
    if (d)
        evbuffer_add_printf(out, "%lldd %lldh", d, h);
    else if (h)
        evbuffer_add_printf(out, "%lldh %lldm", h, m);
    else if (m)
        evbuffer_add_printf(out, "%lldm %llds", m, s);
    else
        evbuffer_add_printf(out, "%llds", s);
}

static void add_sender(struct evbuffer *out, const char *sender)
{
    if (!sender || !*sender)
        evbuffer_add(out, "<>", 2);
    else
        ctl_text_string(out, sender);
}

/* ---- list ------------------------------------------------------------------ */

void report_list_init(struct report_list *r, enum report_fmt fmt,
                      const char *domain, report_active_fn active, void *arg)
{
    memset(r, 0, sizeof *r);
    r->fmt = fmt;
    if (domain)
        snprintf(r->domain, sizeof r->domain, "%s", domain);
    r->active = active;
    r->active_arg = arg;
}

static bool list_wants(const struct report_list *r,
                       const struct queue_envelope *env, size_t i)
{
    return env->rcpt[i].state != RCPT_DONE &&
           (!r->domain[0] || ctl_domain_match(env->rcpt[i].addr, r->domain));
}

static void list_text(struct report_list *r, const struct queue_envelope *env,
                      struct evbuffer *out)
{
    if (r->messages == 0)
        evbuffer_add_printf(out, "%-16s %8s %-20s %s\n", "-Queue ID-------",
                            "--Size--", "----Arrival Time----",
                            "-Sender/Recipient-------");
    evbuffer_add_printf(out, "%-16s %8llu ", env->id,
                        (unsigned long long)env->size);
    add_time(out, env->arrival, false);
    evbuffer_add(out, "  ", 2);
    add_sender(out, env->sender);
    evbuffer_add(out, "\n", 1);
    for (size_t i = 0; i < env->nrcpt; i++) {
        if (!list_wants(r, env, i))
            continue;
        enum rcpt_state st = rcpt_state(r->active, r->active_arg, env, i);
        evbuffer_add_printf(out, "    %-9s ", ctl_state_name(st));
        ctl_text_string(out, env->rcpt[i].addr);
        evbuffer_add(out, "\n", 1);
        if (env->rcpt[i].last_error && env->rcpt[i].last_error[0]) {
            evbuffer_add(out, "              (", 15);
            ctl_text_string(out, env->rcpt[i].last_error);
            evbuffer_add(out, ")\n", 2);
        }
    }
    evbuffer_add(out, "\n", 1);
}

static void list_json(struct report_list *r, const struct queue_envelope *env,
                      struct evbuffer *out)
{
    evbuffer_add_printf(out, "{\"id\":\"%s\",\"size\":%llu,\"arrival\":%lld,"
                        "\"sender\":", env->id, (unsigned long long)env->size,
                        (long long)env->arrival);
    ctl_json_string(out, env->sender ? env->sender : "");
    evbuffer_add_printf(out, ",\"recipients\":[");
    bool first = true;
    for (size_t i = 0; i < env->nrcpt; i++) {
        if (!list_wants(r, env, i))
            continue;
        const struct queue_rcpt *rc = &env->rcpt[i];
        enum rcpt_state st = rcpt_state(r->active, r->active_arg, env, i);
        evbuffer_add_printf(out, "%s{\"address\":", first ? "" : ",");
        ctl_json_string(out, rc->addr);
        evbuffer_add_printf(out, ",\"state\":\"%s\",\"attempts\":%lu,"
                            "\"next_attempt\":%lld,\"last_error\":",
                            ctl_state_name(st), (unsigned long)rc->attempts,
                            (long long)rc->next_attempt);
        ctl_json_string(out, rc->last_error);
        evbuffer_add(out, "}", 1);
        first = false;
    }
    evbuffer_add(out, "]}\n", 3);
}

void report_list_add(struct report_list *r, const struct queue_envelope *env,
                     struct evbuffer *out)
{
    if (r->domain[0]) {
        size_t i = 0;
        while (i < env->nrcpt && !list_wants(r, env, i))
            i++;
        if (i == env->nrcpt)
            return;
    }
    if (r->fmt == REPORT_JSON)
        list_json(r, env, out);
    else
        list_text(r, env, out);
    r->messages++;
    r->bytes += env->size;
}

void report_list_end(struct report_list *r, struct evbuffer *out)
{
    if (r->fmt == REPORT_JSON)
        return;
    if (r->messages == 0) {
        evbuffer_add_printf(out, "Mail queue is empty\n");
        return;
    }
    evbuffer_add_printf(out, "-- %llu Kbytes in %llu request%s.\n",
                        (unsigned long long)((r->bytes + 1023) / 1024),
                        (unsigned long long)r->messages,
                        r->messages == 1 ? "" : "s");
}

/* ---- show ------------------------------------------------------------------ */

static void show_envelope(const struct queue_envelope *env,
                          report_active_fn active, void *arg,
                          struct evbuffer *out)
{
    evbuffer_add_printf(out, "id: %s\narrival: ", env->id);
    add_time(out, env->arrival, true);
    evbuffer_add_printf(out, " (%lld)\nsize: %llu\nsender: <",
                        (long long)env->arrival, (unsigned long long)env->size);
    ctl_text_string(out, env->sender);
    evbuffer_add(out, ">\nclient: ", 10);
    ctl_text_string(out, env->client_name ? env->client_name : "unknown");
    evbuffer_add(out, " [", 2);
    ctl_text_string(out, env->client_addr);
    evbuffer_add(out, "]\nhelo: ", 8);
    ctl_text_string(out, env->helo);
    evbuffer_add_printf(out, "\nflags:%s%s%s%s\n",
                        env->flags & QENV_8BITMIME ? " 8BITMIME" : "",
                        env->flags & QENV_SMTPUTF8 ? " SMTPUTF8" : "",
                        env->flags & QENV_WARNED ? " WARNED" : "",
                        env->flags & (QENV_8BITMIME | QENV_SMTPUTF8 |
                                      QENV_WARNED) ? "" : " -");
    for (size_t i = 0; i < env->nrcpt; i++) {
        const struct queue_rcpt *rc = &env->rcpt[i];
        evbuffer_add_printf(out, "recipient: %s <",
                            ctl_state_name(rcpt_state(active, arg, env, i)));
        ctl_text_string(out, rc->addr);
        evbuffer_add_printf(out, "> attempts %lu", (unsigned long)rc->attempts);
        if (rc->state != RCPT_DONE && rc->next_attempt > 0) {
            evbuffer_add(out, ", next ", 7);
            add_time(out, rc->next_attempt, true);
        }
        evbuffer_add(out, "\n", 1);
        if (rc->last_error && rc->last_error[0]) {
            evbuffer_add(out, "  last error: ", 14);
            ctl_text_string(out, rc->last_error);
            evbuffer_add(out, "\n", 1);
        }
    }
}

/* The header of BODY (up to the empty line that ends it), CRLF made LF. */
static void show_header(struct evbuffer *body, struct evbuffer *out)
{
    struct evbuffer_ptr end = evbuffer_search(body, "\r\n\r\n", 4, NULL);
    size_t len = end.pos < 0 ? evbuffer_get_length(body) : (size_t)end.pos + 2;
    while (len > 0) {
        size_t eol = 0;
        struct evbuffer_ptr nl = evbuffer_search_eol(body, NULL, &eol,
                                                     EVBUFFER_EOL_CRLF);
        if (nl.pos < 0 || (size_t)nl.pos >= len) {
            evbuffer_remove_buffer(body, out, len);
            evbuffer_add(out, "\n", 1);
            return;
        }
        evbuffer_remove_buffer(body, out, (size_t)nl.pos);
        evbuffer_add(out, "\n", 1);
        evbuffer_drain(body, eol);
        len -= (size_t)nl.pos + eol;
    }
}

void report_show(const struct queue_envelope *env, struct evbuffer *body,
                 bool whole, report_active_fn active, void *arg,
                 struct evbuffer *out)
{
    if (whole) {
        evbuffer_add_buffer(out, body);
        return;
    }
    show_envelope(env, active, arg, out);
    evbuffer_add(out, "\n", 1);
    show_header(body, out);
}

/* ---- stats ------------------------------------------------------------------ */

void report_stats_init(struct report_stats *r, report_active_fn active,
                       void *arg)
{
    memset(r, 0, sizeof *r);
    r->active = active;
    r->active_arg = arg;
}

/* The entry of domain NAME (inserted in order when new), or NULL. */
static struct report_domain *stats_domain(struct report_stats *r,
                                          const char *name)
{
    size_t lo = 0, hi = r->ndom;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(r->dom[mid].name, name);
        if (c == 0)
            return &r->dom[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (r->ndom == r->domcap) {
        size_t n = r->domcap ? r->domcap * 2 : 16;
        struct report_domain *d = realloc(r->dom, n * sizeof *d);
        if (!d) {
            r->nomem = true;
            return NULL;
        }
        r->dom = d;
        r->domcap = n;
    }
    memmove(&r->dom[lo + 1], &r->dom[lo], (r->ndom - lo) * sizeof *r->dom);
    memset(&r->dom[lo], 0, sizeof *r->dom);
    snprintf(r->dom[lo].name, sizeof r->dom[lo].name, "%s", name);
    r->ndom++;
    return &r->dom[lo];
}

static void stats_rcpt(struct report_stats *r, const char *addr,
                       enum rcpt_state st)
{
    char name[256];
    const char *at = addr ? strrchr(addr, '@') : NULL;
    snprintf(name, sizeof name, "%s", at ? at + 1 : "(none)");
    for (char *p = name; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    struct report_domain *d = stats_domain(r, name);
    if (!d)
        return;
    if (st == RCPT_ACTIVE)
        d->active++;
    else if (st == RCPT_HELD)
        d->held++;
    else
        d->deferred++;
}

void report_stats_add(struct report_stats *r, const struct queue_envelope *env)
{
    r->messages++;
    r->bytes += env->size;
    if (r->oldest == 0 || env->arrival < r->oldest)
        r->oldest = env->arrival;
    for (size_t i = 0; i < env->nrcpt; i++) {
        enum rcpt_state st = rcpt_state(r->active, r->active_arg, env, i);
        if (st == RCPT_DONE)
            continue;
        r->recipients++;
        stats_rcpt(r, env->rcpt[i].addr, st);
    }
}

static void stats_down(const struct sched_stats *ss, int64_t now,
                       struct evbuffer *out)
{
    if (!ss) {
        evbuffer_add_printf(out, "destinations down: unknown "
                            "(backupmx is not running)\n");
        return;
    }
    evbuffer_add_printf(out, "destinations down: %zu\n", ss->ndown);
    size_t n = ss->ndown;
    size_t max = sizeof ss->down / sizeof ss->down[0];
    for (size_t i = 0; i < n && i < max; i++) {
        const struct sched_dest_info *d = &ss->down[i];
        evbuffer_add(out, "  ", 2);
        ctl_text_string(out, d->name);
        evbuffer_add(out, ": next probe ", 13);
        if (d->next_probe <= now)
            evbuffer_add(out, "now", 3);
        else {
            evbuffer_add(out, "in ", 3);
            add_duration(out, d->next_probe - now);
            evbuffer_add(out, " (", 2);
            add_time(out, d->next_probe, false);
            evbuffer_add(out, ")", 1);
        }
        if (d->last_error[0]) {
            evbuffer_add(out, "; ", 2);
            ctl_text_string(out, d->last_error);
        }
        evbuffer_add(out, "\n", 1);
    }
    if (n > max)
        evbuffer_add_printf(out, "  ... and %zu more\n", n - max);
}

void report_stats_end(struct report_stats *r, const struct sched_stats *ss,
                      int64_t now, struct evbuffer *out)
{
    uint64_t deferred = 0, held = 0, active = 0;
    for (size_t i = 0; i < r->ndom; i++) {
        deferred += r->dom[i].deferred;
        held += r->dom[i].held;
        active += r->dom[i].active;
    }
    evbuffer_add_printf(out, "messages: %llu\nrecipients: %llu (deferred %llu, "
                        "held %llu, active %llu)\nbytes: %llu (%llu Kbytes)\n",
                        (unsigned long long)r->messages,
                        (unsigned long long)r->recipients,
                        (unsigned long long)deferred, (unsigned long long)held,
                        (unsigned long long)active,
                        (unsigned long long)r->bytes,
                        (unsigned long long)((r->bytes + 1023) / 1024));
    evbuffer_add(out, "oldest: ", 8);
    if (r->messages == 0)
        evbuffer_add(out, "-", 1);
    else {
        add_duration(out, now - r->oldest);
        evbuffer_add(out, " (", 2);
        add_time(out, r->oldest, true);
        evbuffer_add(out, ")", 1);
    }
    evbuffer_add(out, "\n", 1);
    if (ss)
        evbuffer_add_printf(out, "delivered since start: %llu\n"
                            "bounced since start: %llu\n"
                            "deferred attempts since start: %llu\n",
                            (unsigned long long)ss->delivered,
                            (unsigned long long)ss->bounced,
                            (unsigned long long)ss->deferred);
    else
        evbuffer_add_printf(out, "delivered since start: - (backupmx is not "
                            "running)\nbounced since start: -\n"
                            "deferred attempts since start: -\n");
    if (r->nomem)
        evbuffer_add_printf(out, "(out of memory: some domains are missing)\n");
    if (r->ndom > 0) {
        evbuffer_add_printf(out, "\n%-40s %10s %10s %10s\n", "domain",
                            "deferred", "held", "active");
        for (size_t i = 0; i < r->ndom; i++) {
            size_t before = evbuffer_get_length(out);
            ctl_text_string(out, r->dom[i].name);
            size_t w = evbuffer_get_length(out) - before;
            evbuffer_add_printf(out, "%*s %10llu %10llu %10llu\n",
                                w < 40 ? (int)(40 - w) : 0, "",
                                (unsigned long long)r->dom[i].deferred,
                                (unsigned long long)r->dom[i].held,
                                (unsigned long long)r->dom[i].active);
        }
    }
    evbuffer_add(out, "\n", 1);
    stats_down(ss, now, out);
}

void report_stats_free(struct report_stats *r)
{
    free(r->dom);
    r->dom = NULL;
    r->ndom = r->domcap = 0;
}
