/* Multidrop routing (see multidrop.h). */
#include "multidrop.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* End of the header section: the offset of the empty line, or LEN. */
static size_t header_end(const char *msg, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (msg[i] == '\n')
            return i;
        if (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n')
            return i;
        const char *nl = memchr(msg + i, '\n', len - i);
        if (nl == NULL)
            return len;
        i = (size_t)(nl - msg) + 1;
    }
    return len;
}

/* Offset just past the field starting at I (continuation lines included). */
static size_t field_end(const char *msg, size_t hend, size_t i)
{
    for (;;) {
        const char *nl = memchr(msg + i, '\n', hend - i);
        if (nl == NULL)
            return hend;
        i = (size_t)(nl - msg) + 1;
        if (i >= hend || (msg[i] != ' ' && msg[i] != '\t'))
            return i;
    }
}

/* True if the field at I is named NAME; *colon = offset after the ':'. */
static bool field_is(const char *msg, size_t end, size_t i, const char *name, size_t *colon)
{
    size_t n = strlen(name);
    if (i + n >= end || strncasecmp(msg + i, name, n) != 0)
        return false;
    size_t j = i + n;
    while (j < end && (msg[j] == ' ' || msg[j] == '\t'))
        j++;
    if (j >= end || msg[j] != ':')
        return false;
    *colon = j + 1;
    return true;
}

bool md_field_span(const char *msg, size_t len, const char *name, size_t *off, size_t *flen)
{
    size_t hend = header_end(msg, len);
    for (size_t i = 0; i < hend;) {
        size_t e = field_end(msg, hend, i), colon;
        if (field_is(msg, e, i, name, &colon)) {
            *off = i;
            *flen = e - i;
            return true;
        }
        i = e;
    }
    return false;
}

char *md_header(const char *msg, size_t len, const char *name)
{
    size_t off, flen, colon;
    if (!md_field_span(msg, len, name, &off, &flen))
        return NULL;
    field_is(msg, off + flen, off, name, &colon);
    size_t n = off + flen - colon;
    char *v = malloc(n + 1);
    if (v == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = colon; i < off + flen; i++)
        if (msg[i] != '\r' && msg[i] != '\n')
            v[o++] = msg[i];
    v[o] = '\0';
    return v;
}

void md_free_list(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* local@domain with printable, unspaced characters and one '@' (quoting
 * is refused above, so a second '@' would be a route the local MTA might
 * follow); lower-cases the domain. */
static bool addr_spec_ok(char *a)
{
    char *at = strrchr(a, '@');
    if (at == NULL || at == a || at[1] == '\0' || strlen(a) > 254 || a[0] == '-'
        || strchr(a, '@') != at)
        return false;
    for (char *p = a; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 32 || c == 127 || strchr("<>()[],;:\\\"", c) != NULL)
            return false;
    }
    for (char *p = at + 1; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
            return false;
        *p = (char)tolower((unsigned char)*p);
    }
    size_t dl = strlen(at + 1);
    if (at[dl] == '.')          /* trailing dot of the domain */
        at[dl] = '\0';
    return true;
}

/* One list element: the part in <...> if any, else the text outside
 * comments and quotes, with a group's "name:" dropped. */
static char *element_address(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    int depth = 0;
    bool quoted = false, angle = false, had_angle = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (quoted) {
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '"')
                quoted = false;
            continue;
        }
        if (depth > 0) {
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            continue;
        }
        if (c == '(') {
            depth++;
        } else if (c == '"') {
            quoted = true;
        } else if (c == '<') {
            angle = had_angle = true;
            o = 0;
        } else if (c == '>') {
            angle = false;
            break;
        } else if (c == ':' && !angle) {
            o = 0;              /* group display name */
        } else if (c == ';' && !angle) {
            break;
        } else if (o > 0 || (c != ' ' && c != '\t')) {
            out[o++] = c;
        }
    }
    while (o > 0 && (out[o - 1] == ' ' || out[o - 1] == '\t'))
        o--;                    /* "a@b (comment)" */
    out[o] = '\0';
    (void)had_angle;
    return out;
}

size_t md_addresses(const char *value, char ***out)
{
    size_t n = 0, cap = 4;
    char **list = malloc(cap * sizeof *list);
    *out = NULL;
    if (list == NULL)
        return 0;
    const char *start = value;
    int depth = 0;
    bool quoted = false, angle = false;
    for (const char *p = value;; p++) {
        char c = *p;
        bool end = c == '\0';
        if (!end && quoted) {
            if (c == '\\' && p[1] != '\0')
                p++;
            else if (c == '"')
                quoted = false;
            continue;
        }
        if (!end && depth > 0) {
            if (c == '\\' && p[1] != '\0')
                p++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            continue;
        }
        if (c == '"')
            quoted = true;
        else if (c == '(')
            depth++;
        else if (c == '<')
            angle = true;
        else if (c == '>')
            angle = false;
        if (end || ((c == ',' || c == ';') && !angle)) {
            char *a = element_address(start, (size_t)(p - start));
            if (a != NULL && addr_spec_ok(a)) {
                if (n == cap) {
                    char **l2 = realloc(list, 2 * cap * sizeof *list);
                    if (l2 == NULL) {
                        free(a);
                        break;
                    }
                    list = l2;
                    cap *= 2;
                }
                list[n++] = a;
            } else {
                free(a);
            }
            start = p + 1;
        }
        if (end)
            break;
    }
    *out = list;
    return n;
}

static bool is_local(const struct md_rules *r, const char *addr)
{
    const char *dom = strrchr(addr, '@') + 1;
    for (size_t i = 0; i < r->nlocal; i++)
        if (strcasecmp(dom, r->localdomains[i]) == 0)
            return true;
    return false;
}

static const char *mapped(const struct md_rules *r, const char *addr)
{
    for (size_t i = 0; i < r->nmaps; i++)
        if (strcasecmp(r->maps[i].from, addr) == 0)
            return r->maps[i].to;
    return addr;
}

static int add_rcpt(struct md_route *rt, const char *addr)
{
    for (size_t i = 0; i < rt->nrcpts; i++)
        if (strcasecmp(rt->rcpts[i], addr) == 0)
            return 0;
    char **l = realloc(rt->rcpts, (rt->nrcpts + 1) * sizeof *l);
    if (l == NULL)
        return -1;
    rt->rcpts = l;
    if ((l[rt->nrcpts] = strdup(addr)) == NULL)
        return -1;
    rt->nrcpts++;
    return 0;
}

/* Adds the addresses of every (or only the topmost) field NAME that pass
 * the local-domain rule. */
static int collect(const char *msg, size_t len, const char *name, bool all_fields,
                   bool need_local, const struct md_rules *r, struct md_route *rt)
{
    size_t pos = 0;
    while (pos < len) {
        size_t off, flen;
        if (!md_field_span(msg + pos, len - pos, name, &off, &flen))
            break;
        char *v = md_header(msg + pos + off, flen, name);
        if (v == NULL)
            return -1;
        char **addrs;
        size_t n = md_addresses(v, &addrs);
        free(v);
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++)
            if (!need_local || is_local(r, addrs[i]))
                rc = add_rcpt(rt, mapped(r, addrs[i]));
        md_free_list(addrs, n);
        if (rc != 0)
            return -1;
        if (!all_fields)
            break;
        pos += off + flen;
    }
    return 0;
}

static int find_sender(const char *msg, size_t len, struct md_route *rt)
{
    char *v = md_header(msg, len, "Return-Path");
    const char *src = "Return-Path";
    if (v == NULL) {
        v = md_header(msg, len, "From");
        src = "From";
    }
    rt->sender = NULL;
    if (v != NULL && strcmp(src, "Return-Path") == 0) {
        const char *p = v + strspn(v, " \t");
        if (strncmp(p, "<>", 2) == 0 && p[2 + strspn(p + 2, " \t")] == '\0')
            rt->sender = strdup("");
    }
    if (v != NULL && rt->sender == NULL) {
        char **addrs;
        size_t n = md_addresses(v, &addrs);
        if (n > 0)
            rt->sender = strdup(addrs[0]);
        md_free_list(addrs, n);
    }
    free(v);
    if (rt->sender == NULL)
        rt->sender = strdup("");
    return rt->sender ? 0 : -1;
}

int md_route(const char *msg, size_t len, const struct md_rules *r, struct md_route *rt)
{
    *rt = (struct md_route){ 0 };
    if (find_sender(msg, len, rt) != 0)
        goto oom;
    if (r->header != NULL
        && collect(msg, len, r->header, false, r->nlocal > 0, r, rt) != 0)
        goto oom;
    if (rt->nrcpts > 0) {
        rt->source = r->header;
        return 0;
    }
    if (r->nlocal > 0) {
        if (collect(msg, len, "To", true, true, r, rt) != 0
            || collect(msg, len, "Cc", true, true, r, rt) != 0)
            goto oom;
        if (rt->nrcpts > 0) {
            rt->source = "To/Cc";
            return 0;
        }
    }
    if (add_rcpt(rt, r->postmaster ? r->postmaster : "postmaster") != 0)
        goto oom;
    rt->source = "postmaster";
    return 0;
oom:
    md_route_free(rt);
    return -1;
}

void md_route_free(struct md_route *rt)
{
    free(rt->sender);
    md_free_list(rt->rcpts, rt->nrcpts);
    *rt = (struct md_route){ 0 };
}
