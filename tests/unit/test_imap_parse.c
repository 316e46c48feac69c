/* Unit tests: IMAP command syntax (catchall/imap_parse.c) and the header
 * helpers behind ENVELOPE and HEADER.FIELDS (catchall/imap_envelope.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <event2/buffer.h>

#include "imap_envelope.h"
#include "imap_parse.h"
#include "maildir.h"

/* The parser over a C string (literals are written "{n}\r\n..."). */
#define PARSE(ps, s) imap_parser_init(&(ps), (s), strlen(s))

/* ---- tokens ----------------------------------------------------------- */

static void test_tag_and_command(void **state)
{
    (void)state;
    struct imap_parser ps;
    const char *tag, *cmd;
    PARSE(ps, "A0001 capability");
    assert_true(imap_tag(&ps, &tag));
    assert_string_equal(tag, "A0001");
    assert_true(imap_sp(&ps));
    assert_true(imap_atom_upper(&ps, &cmd));
    assert_string_equal(cmd, "CAPABILITY");
    assert_true(imap_eol(&ps));
    imap_parser_free(&ps);

    PARSE(ps, "GIMM0 NOOP");
    assert_true(imap_tag(&ps, &tag));
    assert_string_equal(tag, "GIMM0");
    imap_parser_free(&ps);

    /* '+' is not a tag character, neither are '(' or '*'. */
    const char *bad[] = {"+ NOOP", "(a NOOP", "* NOOP", " NOOP", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        PARSE(ps, bad[i]);
        assert_false(imap_tag(&ps, &tag));
        assert_non_null(ps.error);
        imap_parser_free(&ps);
    }
    /* A command with something after it. */
    PARSE(ps, "a NOOP x");
    assert_true(imap_tag(&ps, &tag) && imap_sp(&ps) && imap_atom_upper(&ps, &cmd));
    assert_false(imap_eol(&ps));
    imap_parser_free(&ps);
}

static void test_strings(void **state)
{
    (void)state;
    struct imap_parser ps;
    struct imap_str a, b;

    PARSE(ps, "catch secret");
    assert_true(imap_astring(&ps, &a) && imap_sp(&ps) && imap_astring(&ps, &b));
    assert_string_equal(a.s, "catch");
    assert_string_equal(b.s, "secret");
    assert_true(imap_eol(&ps));
    imap_parser_free(&ps);

    /* Quoted strings with \\ and \" escapes. */
    PARSE(ps, "\"us\\\"er\" \"pa\\\\ss word\"");
    assert_true(imap_astring(&ps, &a) && imap_sp(&ps) && imap_astring(&ps, &b));
    assert_string_equal(a.s, "us\"er");
    assert_int_equal(a.len, 5);
    assert_string_equal(b.s, "pa\\ss word");
    imap_parser_free(&ps);

    /* Empty quoted string. */
    PARSE(ps, "\"\"");
    assert_true(imap_astring(&ps, &a));
    assert_int_equal(a.len, 0);
    imap_parser_free(&ps);

    /* Literals, as the session assembles them. */
    PARSE(ps, "{5}\r\ncatch {7}\r\nsec ret");
    assert_true(imap_astring(&ps, &a) && imap_sp(&ps) && imap_astring(&ps, &b));
    assert_string_equal(a.s, "catch");
    assert_string_equal(b.s, "sec ret");
    assert_true(imap_eol(&ps));
    imap_parser_free(&ps);

    PARSE(ps, "{0}\r\n");
    assert_true(imap_astring(&ps, &a));
    assert_int_equal(a.len, 0);
    assert_true(imap_eol(&ps));
    imap_parser_free(&ps);

    /* ']' is allowed in an astring atom, not '(' or '{' alone. */
    PARSE(ps, "a]b");
    assert_true(imap_astring(&ps, &a));
    assert_string_equal(a.s, "a]b");
    imap_parser_free(&ps);

    const char *bad[] = {
        "\"unterminated", "\"bad\\escape\"", "\"ends in backslash\\", "{5}\r\nabc",
        "{5}abcde", "{x}\r\n", "(", "", "{99999999999}\r\n", "\"cr\rin\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        PARSE(ps, bad[i]);
        assert_false(imap_astring(&ps, &a));
        assert_non_null(ps.error);
        imap_parser_free(&ps);
    }

    /* A NUL in a literal is refused (it would truncate a C string). */
    const char nul[] = "{3}\r\na\0b";
    imap_parser_init(&ps, nul, sizeof nul - 1);
    assert_false(imap_astring(&ps, &a));
    imap_parser_free(&ps);

    /* list-mailbox takes wildcards. */
    PARSE(ps, "INBOX* %");
    assert_true(imap_list_mailbox(&ps, &a) && imap_sp(&ps) && imap_list_mailbox(&ps, &b));
    assert_string_equal(a.s, "INBOX*");
    assert_string_equal(b.s, "%");
    imap_parser_free(&ps);
}

static void test_many_quoted_strings_bounded(void **state)
{
    (void)state;
    /* Thousands of short strings in one command: each is allocated at its
     * own size, not at the size of the rest of the command. */
    size_t n = 20000;
    char *cmd = malloc(3 * n + 1);
    for (size_t i = 0; i < n; i++)
        memcpy(cmd + 3 * i, "\"\" ", 3);
    cmd[3 * n - 1] = '\0';
    struct imap_parser ps;
    imap_parser_init(&ps, cmd, strlen(cmd));
    struct imap_str s;
    for (size_t i = 0; i < n; i++) {
        assert_true(imap_astring(&ps, &s));
        if (i + 1 < n)
            assert_true(imap_sp(&ps));
    }
    assert_true(imap_eol(&ps));
    imap_parser_free(&ps);
    free(cmd);
}

/* ---- sequence sets ---------------------------------------------------- */

static void test_seqset(void **state)
{
    (void)state;
    struct imap_parser ps;
    struct imap_seqset set;

    PARSE(ps, "1,3:5,9:*");
    assert_true(imap_seqset(&ps, &set));
    assert_int_equal(set.n, 3);
    assert_true(imap_eol(&ps));
    assert_true(imap_seqset_contains(&set, 1, 20));
    assert_false(imap_seqset_contains(&set, 2, 20));
    assert_true(imap_seqset_contains(&set, 4, 20));
    assert_false(imap_seqset_contains(&set, 6, 20));
    assert_true(imap_seqset_contains(&set, 9, 20));
    assert_true(imap_seqset_contains(&set, 20, 20));
    assert_false(imap_seqset_contains(&set, 21, 20));
    assert_int_equal(imap_seqset_max(&set), 9);
    imap_parser_free(&ps);

    /* Reversed ranges; "n:*" beyond the end still means the last one. */
    PARSE(ps, "5:2");
    assert_true(imap_seqset(&ps, &set));
    assert_true(imap_seqset_contains(&set, 3, 10));
    assert_false(imap_seqset_contains(&set, 6, 10));
    imap_parser_free(&ps);
    PARSE(ps, "100:*");
    assert_true(imap_seqset(&ps, &set));
    assert_true(imap_seqset_contains(&set, 7, 7));
    assert_false(imap_seqset_contains(&set, 6, 7));
    imap_parser_free(&ps);

    /* '*' on an empty mailbox matches nothing. */
    PARSE(ps, "*");
    assert_true(imap_seqset(&ps, &set));
    assert_false(imap_seqset_contains(&set, 0, 0));
    assert_false(imap_seqset_contains(&set, 1, 0));
    imap_parser_free(&ps);
    PARSE(ps, "1:*");
    assert_true(imap_seqset(&ps, &set));
    assert_false(imap_seqset_contains(&set, 1, 0));
    imap_parser_free(&ps);

    /* 4294967295 is the largest; one more overflows. */
    PARSE(ps, "4294967295");
    assert_true(imap_seqset(&ps, &set));
    assert_true(imap_seqset_contains(&set, 4294967295u, 5));
    imap_parser_free(&ps);

    const char *bad[] = {"0", "1:0", "4294967296", ",1", "a", ":", "1,", "1:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        PARSE(ps, bad[i]);
        assert_false(imap_seqset(&ps, &set) && imap_at_eol(&ps));
        imap_parser_free(&ps);
    }
    /* "1:2:3" parses "1:2" and leaves ":3", which the caller refuses. */
    PARSE(ps, "1:2:3");
    assert_true(imap_seqset(&ps, &set));
    assert_false(imap_eol(&ps));
    imap_parser_free(&ps);
}

/* ---- flags ------------------------------------------------------------ */

static void test_flags(void **state)
{
    (void)state;
    struct imap_parser ps;
    unsigned f, kw;

    PARSE(ps, "(\\Seen \\Deleted)");
    assert_true(imap_flag_list(&ps, &f, &kw));
    assert_int_equal(f, MF_SEEN | MF_DELETED);
    assert_int_equal(kw, 0);
    imap_parser_free(&ps);

    PARSE(ps, "\\deleted \\ANSWERED $Junk");
    assert_true(imap_flag_list(&ps, &f, &kw));
    assert_int_equal(f, MF_DELETED | MF_ANSWERED);
    assert_int_equal(kw, 1);
    assert_true(imap_eol(&ps));
    imap_parser_free(&ps);

    PARSE(ps, "()");
    assert_true(imap_flag_list(&ps, &f, &kw));
    assert_int_equal(f, 0);
    imap_parser_free(&ps);

    PARSE(ps, "(\\Flagged \\Draft)");
    assert_true(imap_flag_list(&ps, &f, &kw));
    assert_int_equal(f, MF_FLAGGED | MF_DRAFT);
    imap_parser_free(&ps);

    const char *bad[] = {"(\\Recent)", "(\\Seen", "(\\Bogus)", "\\", "(\\Seen  \\Deleted)"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        PARSE(ps, bad[i]);
        assert_false(imap_flag_list(&ps, &f, &kw));
        imap_parser_free(&ps);
    }
}

/* ---- FETCH ------------------------------------------------------------ */

static const char *att_name(const struct imap_fetch_att *a)
{
    static char buf[256];
    assert_true(imap_fetch_att_name(a, buf, sizeof buf) > 0);
    return buf;
}

static void test_fetch_atts(void **state)
{
    (void)state;
    struct imap_parser ps;
    struct imap_fetch_req req;

    PARSE(ps, "(UID RFC822.SIZE)");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.n, 2);
    assert_int_equal(req.att[0].kind, FA_UID);
    assert_int_equal(req.att[1].kind, FA_RFC822_SIZE);
    assert_true(imap_eol(&ps));
    imap_parser_free(&ps);

    PARSE(ps, "rfc822.header");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.n, 1);
    assert_int_equal(req.att[0].kind, FA_RFC822_HEADER);
    assert_string_equal(att_name(&req.att[0]), "RFC822.HEADER");
    imap_parser_free(&ps);

    PARSE(ps, "BODY.PEEK[TEXT]");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.att[0].kind, FA_SECTION);
    assert_true(req.att[0].peek);
    assert_int_equal(req.att[0].sec, SEC_TEXT);
    assert_string_equal(att_name(&req.att[0]), "BODY[TEXT]");
    imap_parser_free(&ps);

    PARSE(ps, "BODY[]");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_false(req.att[0].peek);
    assert_int_equal(req.att[0].sec, SEC_ALL);
    assert_string_equal(att_name(&req.att[0]), "BODY[]");
    imap_parser_free(&ps);

    /* getmail sends the section in lower case. */
    PARSE(ps, "(BODY.PEEK[header] UID)");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.att[0].sec, SEC_HEADER);
    assert_string_equal(att_name(&req.att[0]), "BODY[HEADER]");
    imap_parser_free(&ps);

    PARSE(ps, "BODY[]<100.50>");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_true(req.att[0].partial);
    assert_int_equal(req.att[0].off, 100);
    assert_int_equal(req.att[0].len, 50);
    assert_string_equal(att_name(&req.att[0]), "BODY[]<100>");
    imap_parser_free(&ps);

    PARSE(ps, "(FLAGS BODY.PEEK[HEADER.FIELDS (From Subject \"X-Original-To\")]<0.1024>)");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.n, 2);
    assert_int_equal(req.att[1].sec, SEC_FIELDS);
    assert_int_equal(req.att[1].nfields, 3);
    assert_string_equal(req.att[1].fields[0], "FROM");
    assert_string_equal(req.att[1].fields[2], "X-ORIGINAL-TO");
    assert_string_equal(att_name(&req.att[1]), "BODY[HEADER.FIELDS (FROM SUBJECT X-ORIGINAL-TO)]<0>");
    imap_parser_free(&ps);

    PARSE(ps, "BODY[HEADER.FIELDS.NOT (Received)]");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.att[0].sec, SEC_FIELDS_NOT);
    imap_parser_free(&ps);

    PARSE(ps, "(BODY[1] BODY[1.2.MIME] BODY[2.TEXT])");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.att[0].nparts, 1);
    assert_int_equal(req.att[0].sec, SEC_ALL);
    assert_string_equal(att_name(&req.att[0]), "BODY[1]");
    assert_int_equal(req.att[1].nparts, 2);
    assert_int_equal(req.att[1].sec, SEC_MIME);
    assert_string_equal(att_name(&req.att[1]), "BODY[1.2.MIME]");
    assert_string_equal(att_name(&req.att[2]), "BODY[2.TEXT]");
    imap_parser_free(&ps);

    /* Macros. */
    PARSE(ps, "ALL");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.n, 4);
    assert_int_equal(req.att[3].kind, FA_ENVELOPE);
    imap_parser_free(&ps);
    PARSE(ps, "fast");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.n, 3);
    imap_parser_free(&ps);
    PARSE(ps, "FULL");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.n, 5);
    assert_int_equal(req.att[4].kind, FA_BODY);
    imap_parser_free(&ps);

    PARSE(ps, "(ENVELOPE INTERNALDATE RFC822 RFC822.TEXT BODYSTRUCTURE BODY)");
    assert_true(imap_fetch_atts(&ps, &req));
    assert_int_equal(req.n, 6);
    assert_int_equal(req.att[5].kind, FA_BODY);
    imap_parser_free(&ps);

    const char *bad[] = {
        "BODY.PEEK", "BODY[", "BODY[TEXT", "BODY[BOGUS]", "BODY[MIME]", "BODY[0]",
        "BODY[]<1>", "BODY[]<1.0>", "BODY[]<a.b>", "(UID", "(UID  FLAGS)", "X-GM-MSGID",
        "BODY[HEADER.FIELDS]", "BODY[HEADER.FIELDS ()]", "BODY[HEADER.FIELDS (A:B)]", "()",
        "BODY[1.2.3.4.5.6.7.8.9]", "RFC822.SIZEX",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        PARSE(ps, bad[i]);
        bool ok = imap_fetch_atts(&ps, &req) && imap_at_eol(&ps);
        if (ok)
            fail_msg("accepted: %s", bad[i]);
        imap_parser_free(&ps);
    }

    /* The longest possible section name fits IMAP_ATT_NAME_MAX: every
     * field a quoted string of escaped '"' or '\\'. */
    static char longest[IMAP_FIELDS_MAX * (2 * IMAP_FIELD_NAME_MAX + 3) + 64];
    strcpy(longest, "BODY.PEEK[HEADER.FIELDS.NOT (");
    size_t len = strlen(longest);
    for (int i = 0; i < IMAP_FIELDS_MAX; i++) {
        if (i > 0)
            longest[len++] = ' ';
        longest[len++] = '"';
        for (int k = 0; k < IMAP_FIELD_NAME_MAX; k++) {
            longest[len++] = '\\';
            longest[len++] = i % 2 ? '\\' : '"';
        }
        longest[len++] = '"';
    }
    strcpy(longest + len, ")]<4294967295.1>");
    PARSE(ps, longest);
    assert_true(imap_fetch_atts(&ps, &req));
    assert_true(imap_eol(&ps));
    {
        static char name[IMAP_ATT_NAME_MAX];
        assert_true(imap_fetch_att_name(&req.att[0], name, sizeof name) > 0);
    }
    imap_parser_free(&ps);
    /* A name over IMAP_FIELD_NAME_MAX is refused. */
    char toolong[IMAP_FIELD_NAME_MAX + 64] = "BODY[HEADER.FIELDS (";
    memset(toolong + strlen(toolong), 'a', IMAP_FIELD_NAME_MAX + 1);
    strcpy(toolong + 20 + IMAP_FIELD_NAME_MAX + 1, ")]");
    PARSE(ps, toolong);
    assert_false(imap_fetch_atts(&ps, &req));
    imap_parser_free(&ps);

    /* More than IMAP_FETCH_ATT_MAX items. */
    char many[1024] = "(";
    for (int i = 0; i < IMAP_FETCH_ATT_MAX + 1; i++)
        strcat(many, i ? " UID" : "UID");
    strcat(many, ")");
    PARSE(ps, many);
    assert_false(imap_fetch_atts(&ps, &req));
    imap_parser_free(&ps);
}

/* ---- SEARCH ----------------------------------------------------------- */

static struct imap_search_key *search(struct imap_parser *ps, const char *s)
{
    struct imap_search_key *root = NULL;
    PARSE(*ps, s);
    if (!imap_search_keys(ps, &root))
        return NULL;
    return root;
}

static void test_search_keys(void **state)
{
    (void)state;
    struct imap_parser ps;
    struct imap_search_key *k;

    k = search(&ps, "UNSEEN");
    assert_non_null(k);
    assert_int_equal(k->type, SK_AND);
    assert_int_equal(k->kids->type, SK_UNSEEN);
    assert_null(k->kids->next);
    imap_parser_free(&ps);

    k = search(&ps, "unseen undeleted");
    assert_non_null(k);
    assert_int_equal(k->kids->type, SK_UNSEEN);
    assert_int_equal(k->kids->next->type, SK_UNDELETED);
    imap_parser_free(&ps);

    k = search(&ps, "UID 3:* NOT DELETED");
    assert_non_null(k);
    assert_int_equal(k->kids->type, SK_UID);
    assert_true(imap_seqset_contains(&k->kids->set, 5, 9));
    assert_int_equal(k->kids->next->type, SK_NOT);
    assert_int_equal(k->kids->next->kids->type, SK_DELETED);
    imap_parser_free(&ps);

    k = search(&ps, "OR SEEN (FLAGGED LARGER 100) 2:4");
    assert_non_null(k);
    struct imap_search_key *or = k->kids;
    assert_int_equal(or->type, SK_OR);
    assert_int_equal(or->kids->type, SK_SEEN);
    assert_int_equal(or->kids->next->type, SK_AND);
    assert_int_equal(or->kids->next->kids->next->type, SK_LARGER);
    assert_int_equal(or->kids->next->kids->next->num, 100);
    assert_int_equal(or->next->type, SK_SEQ);
    imap_parser_free(&ps);

    k = search(&ps, "SINCE 1-Feb-2024 BEFORE \"15-mar-2024\" SENTON 01-Jan-2000");
    assert_non_null(k);
    assert_int_equal(k->kids->day, 1706745600);
    assert_int_equal(k->kids->next->day, 1710460800);
    assert_int_equal(k->kids->next->next->type, SK_SENTON);
    imap_parser_free(&ps);

    k = search(&ps, "FROM alice SUBJECT \"hello world\" HEADER X-Original-To {8}\r\nu@c.test BODY x");
    assert_non_null(k);
    assert_int_equal(k->kids->type, SK_HEADER);
    assert_string_equal(k->kids->field, "FROM");
    assert_string_equal(k->kids->str.s, "alice");
    assert_string_equal(k->kids->next->str.s, "hello world");
    assert_string_equal(k->kids->next->next->field, "X-Original-To");
    assert_string_equal(k->kids->next->next->str.s, "u@c.test");
    assert_int_equal(k->kids->next->next->next->type, SK_BODY);
    imap_parser_free(&ps);

    k = search(&ps, "ALL NEW OLD RECENT ANSWERED UNANSWERED DRAFT UNDRAFT FLAGGED UNFLAGGED "
                    "KEYWORD $Junk UNKEYWORD foo SMALLER 5 TEXT a TO b CC c BCC d");
    assert_non_null(k);
    imap_parser_free(&ps);

    const char *bad[] = {
        "", "BOGUS", "UID", "LARGER x", "NOT", "OR SEEN", "(SEEN", "()", "SINCE 32-Jan-2024",
        "SINCE 1-Foo-2024", "SINCE 1-Jan-24", "SEEN  UNSEEN", "SEEN ", "UNSEENX", "0",
        "HEADER Subject", "CHARSET",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (search(&ps, bad[i]) != NULL)
            fail_msg("accepted: %s", bad[i]);
        imap_parser_free(&ps);
    }

    /* Nesting is bounded. */
    char deep[256] = "";
    for (int i = 0; i < IMAP_SEARCH_DEPTH + 1; i++)
        strcat(deep, "NOT ");
    strcat(deep, "SEEN");
    assert_null(search(&ps, deep));
    assert_string_equal(ps.error, "Search keys nested too deeply");
    imap_parser_free(&ps);
    char paren[256] = "";
    for (int i = 0; i < IMAP_SEARCH_DEPTH + 1; i++)
        strcat(paren, "(");
    strcat(paren, "SEEN");
    assert_null(search(&ps, paren));
    imap_parser_free(&ps);
}

/* ---- framing ---------------------------------------------------------- */

static void test_framing(void **state)
{
    (void)state;
    assert_int_equal(imap_line_literal("a LOGIN {5}", 11), 5);
    assert_int_equal(imap_line_literal("a LOGIN u {0}", 13), 0);
    assert_int_equal(imap_line_literal("a LOGIN u p", 11), -1);
    assert_int_equal(imap_line_literal("a LOGIN {}", 10), -1);
    assert_int_equal(imap_line_literal("a LOGIN {5+}", 12), -2);
    assert_int_equal(imap_line_literal("a X {99999999999999999999}", 26), -2);
    assert_int_equal(imap_line_literal("}", 1), -1);
    assert_int_equal(imap_line_literal("{1}", 3), 1);
    assert_int_equal(imap_line_literal("a APPEND INBOX {10000000}", 25), 10000000);

    char tag[IMAP_TAG_MAX + 1];
    imap_peek_tag("A1 LOGIN {5}", 12, tag);
    assert_string_equal(tag, "A1");
    imap_peek_tag("A1", 2, tag);
    assert_string_equal(tag, "A1");
    imap_peek_tag("(x", 2, tag);
    assert_string_equal(tag, "*");
    imap_peek_tag("+ x", 3, tag);
    assert_string_equal(tag, "*");
    char longtag[200];
    memset(longtag, 'a', sizeof longtag);
    imap_peek_tag(longtag, sizeof longtag, tag);
    assert_string_equal(tag, "*");
}

static void test_dates(void **state)
{
    (void)state;
    time_t t;
    assert_true(imap_parse_date("1-Jan-1970", &t));
    assert_int_equal(t, 0);
    assert_true(imap_parse_date("29-feb-2024", &t));
    assert_int_equal(t, 1709164800);
    assert_false(imap_parse_date("1-Jan-70", &t));
    assert_false(imap_parse_date("001-Jan-1970", &t));
    assert_false(imap_parse_date("1 Jan 1970", &t));
    assert_false(imap_parse_date("1-Jan-1970x", &t));
}

/* ---- header helpers --------------------------------------------------- */

static char *drain(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    return s;
}

static void check_addresses(const char *value, const char *want)
{
    struct evbuffer *b = evbuffer_new();
    imap_address_list(b, value);
    char *got = drain(b);
    if (strcmp(got, want) != 0)
        fail_msg("%s\n  got:  %s\n  want: %s", value, got, want);
    free(got);
    evbuffer_free(b);
}

static void test_addresses(void **state)
{
    (void)state;
    check_addresses("a@b.test", "((NIL NIL \"a\" \"b.test\"))");
    check_addresses("\"Doe, John\" <j.doe@x.test>, Jane Q. Roe (comment) <ja@y.test>",
                    "((\"Doe, John\" NIL \"j.doe\" \"x.test\")(\"Jane Q. Roe\" NIL \"ja\" \"y.test\"))");
    check_addresses("undisclosed-recipients:;",
                    "((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL))");
    check_addresses("Team: a@b, \"q\\\"x\" <c@d>;, bare@z",
                    "((NIL NIL \"Team\" NIL)(NIL NIL \"a\" \"b\")(\"q\\\"x\" NIL \"c\" \"d\")"
                    "(NIL NIL NIL NIL)(NIL NIL \"bare\" \"z\"))");
    check_addresses("<@r1,@r2:u@h>", "((NIL \"@r1,@r2\" \"u\" \"h\"))");
    check_addresses("a@b,,c@d", "((NIL NIL \"a\" \"b\")(NIL NIL \"c\" \"d\"))");
    check_addresses("=?utf-8?q?J=C3=B6rg?= <j@x>", "((\"=?utf-8?q?J=C3=B6rg?=\" NIL \"j\" \"x\"))");
    check_addresses("postmaster", "((NIL NIL \"postmaster\" \"MISSING_DOMAIN\"))");
    check_addresses("\"john doe\"@x.test", "((NIL NIL \"\\\"john doe\\\"\" \"x.test\"))");
    check_addresses("u@[192.0.2.1]", "((NIL NIL \"u\" \"[192.0.2.1]\"))");
    check_addresses("", "NIL");
    check_addresses("<>", "NIL");
    check_addresses("foo bar", "NIL");
    check_addresses("first . last@x", "((NIL NIL \"first.last\" \"x\"))");
    check_addresses(">>> @@@ ,,, ;;; <<<", "NIL");
    check_addresses("a@b (unterminated", "((NIL NIL \"a\" \"b\"))");
    check_addresses("\"unterminated <a@b>", "NIL");
    check_addresses("Name <a@b", "NIL");
    /* 8-bit display names go out as literals. */
    check_addresses("J\xc3\xb6rg <j@x>", "(({5}\r\nJ\xc3\xb6rg NIL \"j\" \"x\"))");
}

static const char HDR[] =
    "Return-Path: <s@example.test>\r\n"
    "X-Original-To: u@catch.test\r\n"
    "Date: Tue, 5 Mar 2024 10:00:00 +0100\r\n"
    "From: Alice <alice@example.test>\r\n"
    "To: u@catch.test,\r\n"
    "  v@catch.test\r\n"
    "Subject: hello\r\n"
    "\tworld\r\n"
    "Message-ID: <1@example.test>\r\n"
    "\r\n";

static void test_envelope(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    imap_envelope(b, HDR, sizeof HDR - 1);
    char *got = drain(b);
    assert_string_equal(got,
        "(\"Tue, 5 Mar 2024 10:00:00 +0100\" \"hello\tworld\" "
        "((\"Alice\" NIL \"alice\" \"example.test\")) "
        "((\"Alice\" NIL \"alice\" \"example.test\")) "
        "((\"Alice\" NIL \"alice\" \"example.test\")) "
        "((NIL NIL \"u\" \"catch.test\")(NIL NIL \"v\" \"catch.test\")) NIL NIL NIL "
        "\"<1@example.test>\")");
    free(got);

    /* No header at all. */
    imap_envelope(b, "", 0);
    got = drain(b);
    assert_string_equal(got, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
    free(got);
    evbuffer_free(b);

    char *v = imap_header_value(HDR, sizeof HDR - 1, "subject");
    assert_string_equal(v, "hello\tworld");
    free(v);
    assert_null(imap_header_value(HDR, sizeof HDR - 1, "Cc"));
    /* Only the header counts: a field after the blank line is body. */
    const char body[] = "A: 1\r\n\r\nB: 2\r\n";
    assert_null(imap_header_value(body, sizeof body - 1, "B"));

    time_t day;
    assert_true(imap_header_day(HDR, sizeof HDR - 1, &day));
    assert_int_equal(day, 1709596800);
    assert_true(imap_header_day("Date: 5 mar 24 1:00 GMT\r\n", 25, &day));
    assert_int_equal(day, 1709596800);
    assert_false(imap_header_day("Date: someday\r\n", 15, &day));
    assert_false(imap_header_day("X: y\r\n", 6, &day));
}

static void test_header_fields(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    const char *names[] = {"SUBJECT", "TO"};
    imap_header_fields(b, HDR, sizeof HDR - 1, names, 2, false);
    char *got = drain(b);
    assert_string_equal(got, "To: u@catch.test,\r\n  v@catch.test\r\nSubject: hello\r\n\tworld\r\n\r\n");
    free(got);

    const char *not[] = {"return-path", "x-original-to", "date", "from", "to", "message-id"};
    imap_header_fields(b, HDR, sizeof HDR - 1, not, 6, true);
    got = drain(b);
    assert_string_equal(got, "Subject: hello\r\n\tworld\r\n\r\n");
    free(got);

    /* No match: just the blank line. A header without a final line end. */
    const char *none[] = {"X-NONE"};
    imap_header_fields(b, HDR, sizeof HDR - 1, none, 1, false);
    got = drain(b);
    assert_string_equal(got, "\r\n");
    free(got);
    const char *a[] = {"A"};
    imap_header_fields(b, "A: 1", 4, a, 1, false);
    got = drain(b);
    assert_string_equal(got, "A: 1\r\n\r\n");
    free(got);
    evbuffer_free(b);
}

static void test_strings_out(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    imap_put_string(b, "a\"b\\c", 5);
    imap_put_nstring(b, NULL, 0);
    imap_put_string(b, "x\r\ny", 4);
    char *got = drain(b);
    assert_string_equal(got, "\"a\\\"b\\\\c\"NIL{4}\r\nx\r\ny");
    free(got);
    evbuffer_free(b);

    assert_true(imap_contains("Hello World", 11, "WORLD", 5));
    assert_false(imap_contains("Hello", 5, "Hello!", 6));
    assert_true(imap_contains("x", 1, "", 0));
}

static void check_structure(const char *hdr, uint64_t size, uint64_t lines, bool ext,
                            const char *want)
{
    struct evbuffer *b = evbuffer_new();
    imap_body_structure(b, hdr, strlen(hdr), size, lines, ext);
    char *got = drain(b);
    if (strcmp(got, want) != 0)
        fail_msg("%s\n  got:  %s\n  want: %s", hdr, got, want);
    free(got);
    evbuffer_free(b);
}

static void test_body_structure(void **state)
{
    (void)state;
    const char *plain = "Subject: x\r\n\r\n";
    assert_int_equal(imap_body_kind(plain, strlen(plain)), BODY_TEXT);
    check_structure(plain, 10, 2, false,
                    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 10 2)");
    check_structure(plain, 10, 2, true,
                    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 10 2 "
                    "NIL NIL NIL NIL)");

    const char *html = "Content-Type: text/html;\r\n charset=\"UTF-8\" (comment); format=flowed\r\n"
                       "Content-Transfer-Encoding: quoted-printable\r\n"
                       "Content-ID: <id@x>\r\n\r\n";
    check_structure(html, 5, 1, false,
                    "(\"text\" \"html\" (\"charset\" \"UTF-8\" \"format\" \"flowed\") \"<id@x>\" NIL "
                    "\"quoted-printable\" 5 1)");

    const char *pdf = "Content-Type: application/pdf; name=\"a b.pdf\"\r\n"
                      "Content-Disposition: attachment; filename=\"a b.pdf\"\r\n"
                      "Content-Transfer-Encoding: base64\r\n\r\n";
    assert_int_equal(imap_body_kind(pdf, strlen(pdf)), BODY_OTHER);
    check_structure(pdf, 100, 0, true,
                    "(\"application\" \"pdf\" (\"name\" \"a b.pdf\") NIL NIL \"base64\" 100 NIL "
                    "(\"attachment\" (\"filename\" \"a b.pdf\")) NIL NIL)");

    /* Unreadable Content-Type: the RFC 2045 default. */
    const char *junk = "Content-Type: ;;;\r\n\r\n";
    assert_int_equal(imap_body_kind(junk, strlen(junk)), BODY_TEXT);
    check_structure(junk, 1, 1, false,
                    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 1 1)");
    /* A parameter without a value ends the list. */
    check_structure("Content-Type: text/plain; charset\r\n\r\n", 1, 1, false,
                    "(\"text\" \"plain\" NIL NIL NIL \"7bit\" 1 1)");

    const char *mp = "Content-Type: Multipart/Mixed; boundary=x\r\n\r\n";
    assert_int_equal(imap_body_kind(mp, strlen(mp)), BODY_UNSUPPORTED);
    const char *rfc822 = "Content-Type: message/rfc822\r\n\r\n";
    assert_int_equal(imap_body_kind(rfc822, strlen(rfc822)), BODY_UNSUPPORTED);
}

/* Every prefix of valid commands, and some noise, must parse or fail
 * cleanly (the sanitizer build checks the reads). */
static void test_truncations(void **state)
{
    (void)state;
    const char *cmds[] = {
        "(FLAGS BODY.PEEK[HEADER.FIELDS (From \"Subject\")]<0.1024> UID)",
        "OR (UID 1:* SEEN) NOT SINCE 1-Jan-2024 HEADER {3}\r\nabc \"x\"",
        "1,2:*,7",
        /* one string: clang warns about adjacent literals in an array */
        ("From: \"a\\\"b\" <x@y>, (c (d)) g: h@i;\r\nContent-Type: text/plain; a=\"b\\\"\" (x)\r\n"
         "Content-Disposition: inline; filename=x\r\n\r\n"),
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        size_t len = strlen(cmds[i]);
        for (size_t n = 0; n <= len; n++) {
            char *copy = malloc(n ? n : 1);
            memcpy(copy, cmds[i], n);
            struct imap_parser ps;
            struct imap_fetch_req req;
            struct imap_search_key *root;
            struct imap_seqset set;
            imap_parser_init(&ps, copy, n);
            (void)imap_fetch_atts(&ps, &req);
            imap_parser_free(&ps);
            imap_parser_init(&ps, copy, n);
            (void)imap_search_keys(&ps, &root);
            imap_parser_free(&ps);
            imap_parser_init(&ps, copy, n);
            (void)imap_seqset(&ps, &set);
            imap_parser_free(&ps);
            struct evbuffer *b = evbuffer_new();
            imap_envelope(b, copy, n);
            imap_body_structure(b, copy, n, 1, 1, true);
            evbuffer_free(b);
            free(copy);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tag_and_command), cmocka_unit_test(test_strings),
        cmocka_unit_test(test_many_quoted_strings_bounded), cmocka_unit_test(test_seqset),
        cmocka_unit_test(test_flags), cmocka_unit_test(test_fetch_atts),
        cmocka_unit_test(test_search_keys), cmocka_unit_test(test_framing),
        cmocka_unit_test(test_dates), cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_envelope), cmocka_unit_test(test_header_fields),
        cmocka_unit_test(test_strings_out), cmocka_unit_test(test_body_structure),
        cmocka_unit_test(test_truncations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
