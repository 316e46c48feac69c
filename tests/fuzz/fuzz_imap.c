/* libFuzzer target: the IMAP server's command parser (catchall/imap_parse.c)
 * and what it builds from message headers (catchall/imap_envelope.c:
 * ENVELOPE, BODYSTRUCTURE, address lists).
 *
 * Input: byte 0 picks the part. 0: a complete command as the session
 * assembles it (literals inline as "{n}\r\n" + n bytes), parsed the way
 * the session parses FETCH, SEARCH, STORE, LOGIN and the rest, plus the
 * literal framing; otherwise a message header.
 *
 * Checked, beyond memory safety: every FETCH item name fits its buffer;
 * the ENVELOPE and BODYSTRUCTURE written for any header are well-formed
 * IMAP a client can read (balanced parentheses, quoted strings closed,
 * literal lengths exact, no CR or LF outside a literal), since a broken
 * one desynchronises every puller. */
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

#include "fuzz_util.h"
#include "imap_envelope.h"
#include "imap_parse.h"

static void parse_args(struct imap_parser *ps, const char *cmd)
{
    struct imap_seqset set;
    if (strcmp(cmd, "FETCH") == 0) {
        struct imap_fetch_req req;
        if (imap_seqset(ps, &set) && imap_sp(ps) && imap_fetch_atts(ps, &req) && imap_eol(ps)) {
            static char name[IMAP_ATT_NAME_MAX];
            for (size_t i = 0; i < req.n; i++)
                FUZZ_CHECK(imap_fetch_att_name(&req.att[i], name, sizeof name) > 0,
                           "FETCH item %zu has no name", i);
            (void)imap_seqset_max(&set);
            (void)imap_seqset_contains(&set, 7, 100);
        }
    } else if (strcmp(cmd, "SEARCH") == 0) {
        struct imap_search_key *root;
        (void)imap_search_keys(ps, &root);
    } else if (strcmp(cmd, "STORE") == 0) {
        const char *what;
        unsigned flags, kw;
        (void)(imap_seqset(ps, &set) && imap_sp(ps) && imap_atom_upper(ps, &what)
               && imap_sp(ps) && imap_flag_list(ps, &flags, &kw) && imap_eol(ps));
    } else {
        struct imap_str a;
        while (imap_astring(ps, &a) && imap_sp(ps))
            FUZZ_CHECK(strlen(a.s) == a.len, "astring with a NUL inside accepted");
    }
}

static void check_command(const uint8_t *data, size_t size)
{
    char tag[IMAP_TAG_MAX + 1];
    imap_peek_tag((const char *)data, size, tag);
    FUZZ_CHECK(strlen(tag) <= IMAP_TAG_MAX, "tag too long");
    (void)imap_line_literal((const char *)data, size);
    struct imap_parser ps;
    imap_parser_init(&ps, (const char *)data, size);
    const char *t, *cmd;
    if (imap_tag(&ps, &t) && imap_sp(&ps) && imap_atom_upper(&ps, &cmd)) {
        if (strcmp(cmd, "UID") == 0 && imap_sp(&ps))
            (void)imap_atom_upper(&ps, &cmd);
        if (imap_at_eol(&ps) || imap_sp(&ps))
            parse_args(&ps, cmd);
    }
    imap_parser_free(&ps);
    char *s = fuzz_strndup(data, size);
    time_t day;
    (void)imap_parse_date(s, &day);
    free(s);
}

/* A client's view of an IMAP data item: parenthesised lists of atoms,
 * quoted strings and literals. Returns false on anything malformed. */
static bool well_formed(const char *p, size_t n)
{
    int depth = 0;
    for (size_t i = 0; i < n;) {
        char c = p[i];
        if (c == '(') {
            depth++, i++;
        } else if (c == ')') {
            if (--depth < 0)
                return false;
            i++;
        } else if (c == '"') {
            for (i++; i < n && p[i] != '"'; i++) {
                if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
                    return false;
                if (p[i] == '\\' && (++i >= n || (p[i] != '\\' && p[i] != '"')))
                    return false;
            }
            if (i++ >= n)
                return false;
        } else if (c == '{') {
            char *end;
            unsigned long len = strtoul(p + i + 1, &end, 10);
            if (end >= p + n || *end != '}' || (size_t)(end - p) + 3 > n
                || end[1] != '\r' || end[2] != '\n')
                return false;
            i = (size_t)(end - p) + 3;
            if (len > n - i)
                return false;
            i += len;
        } else if (c == '\r' || c == '\n' || c == '\0') {
            return false;
        } else {
            i++;
        }
    }
    return depth == 0;
}

static void check_header(const uint8_t *data, size_t size)
{
    const char *hdr = (const char *)data;
    struct evbuffer *out = evbuffer_new();
    imap_envelope(out, hdr, size);
    size_t n = evbuffer_get_length(out);
    const char *p = (const char *)evbuffer_pullup(out, -1);
    FUZZ_CHECK(n > 0 && p[0] == '(' && well_formed(p, n), "bad ENVELOPE: %.*s", (int)n, p);
    evbuffer_drain(out, n);
    if (imap_body_kind(hdr, size) != BODY_UNSUPPORTED) {
        imap_body_structure(out, hdr, size, 1234, 56, true);
        n = evbuffer_get_length(out);
        p = (const char *)evbuffer_pullup(out, -1);
        FUZZ_CHECK(n > 0 && well_formed(p, n), "bad BODYSTRUCTURE: %.*s", (int)n, p);
    }
    evbuffer_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] == 0)
        check_command(data + 1, size - 1);
    else
        check_header(data + 1, size - 1);
    return 0;
}
