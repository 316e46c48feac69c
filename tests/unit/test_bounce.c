/* Unit tests: delivery status notifications (bounce.c). Structure is checked
 * here in C, and each DSN is also handed to Python's stdlib email parser,
 * which must see a clean multipart/report with the per-recipient fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "bounce.h"
#include "queue.h"

#define HOST "mx2.example.net"
#define NOW 1700000000

static struct queue_envelope test_env(void)
{
    struct queue_envelope env;
    memset(&env, 0, sizeof env);
    strcpy(env.id, "0ABCDEFGHJKMNPQR");
    env.sender = "alice@sender.example";
    env.helo = "client.example";
    env.client_addr = "192.0.2.7";
    env.client_name = "client.example";
    env.arrival = NOW - 3600;
    return env;
}

static const char orig_std[] =
    "Received: from client.example ([192.0.2.7]) by mx2.example.net\r\n"
    "\twith ESMTP id 0ABCDEFGHJKMNPQR; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    "From: Alice <alice@sender.example>\r\n"
    "To: bob@example.com\r\n"
    "Subject: hello there\r\n"
    "Message-ID: <orig-1@sender.example>\r\n"
    "\r\n"
    "BODY-SECRET first line\r\n"
    "Subject: not a header, body\r\n";

/* The DSN as a NUL-terminated string (*LEN without the NUL). */
static char *build(enum bounce_kind kind, const struct queue_envelope *env,
                   const struct bounce_rcpt *r, size_t n, const char *orig,
                   size_t olen, size_t *len)
{
    struct evbuffer *out = evbuffer_new();
    struct evbuffer *ob = NULL;
    if (orig) {
        ob = evbuffer_new();
        evbuffer_add(ob, orig, olen);
    }
    assert_int_equal(bounce_build(out, kind, HOST, "0ABCDEFGHJKMNPQS", env, r, n, ob, NOW), 0);
    if (ob) /* ORIG is not consumed */
        assert_int_equal(evbuffer_get_length(ob), olen);
    *len = evbuffer_get_length(out);
    char *m = malloc(*len + 1);
    assert_non_null(m);
    evbuffer_remove(out, m, *len);
    m[*len] = '\0';
    evbuffer_free(out);
    if (ob)
        evbuffer_free(ob);
    return m;
}

static size_t count(const char *m, const char *s)
{
    size_t c = 0, l = strlen(s);
    for (const char *p = strstr(m, s); p; p = strstr(p + l, s))
        c++;
    return c;
}

/* Lines (after a CRLF or at the start) that begin with PREFIX. */
static size_t count_lines(const char *m, const char *prefix)
{
    size_t c = strncmp(m, prefix, strlen(prefix)) == 0;
    char pat[256];
    snprintf(pat, sizeof pat, "\r\n%s", prefix);
    return c + count(m, pat);
}

/* CRLF everywhere, no NUL, no line over 998 octets; the headers every DSN
 * has; NPARTS parts with the boundary nowhere else. Returns the boundary. */
static void check_structure(const char *m, size_t len, size_t nparts, char *boundary)
{
    assert_int_equal(strlen(m), len);
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        if (m[i] == '\n')
            assert_true(i > 0 && m[i - 1] == '\r');
        if (m[i] == '\r')
            assert_true(i + 1 < len && m[i + 1] == '\n');
        if (m[i] == '\r' || m[i] == '\n') {
            col = 0;
        } else {
            col++;
            assert_true(col <= 998);
        }
    }
    assert_true(len >= 2 && m[len - 2] == '\r' && m[len - 1] == '\n');

    const char *end = strstr(m, "\r\n\r\n");
    assert_non_null(end);
    size_t hl = (size_t)(end - m) + 2;
    char *hdr = strndup(m, hl);
    assert_non_null(hdr);
    assert_int_equal(count_lines(hdr, "Date: "), 1);
    assert_int_equal(count_lines(hdr, "From: MAILER-DAEMON@" HOST " (Mail Delivery System)\r\n"), 1);
    assert_int_equal(count_lines(hdr, "To: <alice@sender.example>\r\n"), 1);
    assert_int_equal(count_lines(hdr, "Subject: "), 1);
    assert_int_equal(count_lines(hdr, "Message-ID: <0ABCDEFGHJKMNPQS@" HOST ">\r\n"), 1);
    assert_int_equal(count_lines(hdr, "Auto-Submitted: auto-replied\r\n"), 1);
    assert_int_equal(count_lines(hdr, "MIME-Version: 1.0\r\n"), 1);
    assert_int_equal(count_lines(hdr, "Content-Type: multipart/report; "
                                      "report-type=delivery-status;\r\n\tboundary=\""), 1);
    const char *b = strstr(hdr, "boundary=\"") + 10;
    size_t bl = strcspn(b, "\"");
    assert_true(bl > 10 && bl <= 70);
    memcpy(boundary, b, bl);
    boundary[bl] = '\0';
    free(hdr);

    char delim[128], close[128];
    snprintf(delim, sizeof delim, "\r\n--%s\r\n", boundary);
    snprintf(close, sizeof close, "\r\n--%s--\r\n", boundary);
    assert_int_equal(count(m, delim), nparts);
    assert_int_equal(count(m, close), 1);
    assert_string_equal(m + len - strlen(close), close);
    /* the parameter, NPARTS delimiters and the close: nowhere else */
    assert_int_equal(count(m, boundary), nparts + 2);
}

/* Part I (0-based) of M: its headers and content, malloc'd. */
static char *part(const char *m, const char *boundary, int i, char **content)
{
    char delim[128];
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    const char *p = m;
    for (int k = 0; k <= i; k++) {
        p = strstr(p, delim);
        assert_non_null(p);
        p += strlen(delim) + 2;
    }
    const char *e = strstr(p, delim);
    assert_non_null(e);
    char *whole = strndup(p, (size_t)(e - p));
    assert_non_null(whole);
    char *sep = strstr(whole, "\r\n\r\n");
    assert_non_null(sep);
    *content = sep + 4;
    sep[2] = '\0';               /* headers keep their last CRLF */
    return whole;
}

static const char py_script[] =
    "import sys, email, email.policy\n"
    "raw = open(sys.argv[1], 'rb').read()\n"
    "m = email.message_from_bytes(raw, policy=email.policy.default)\n"
    "nparts = int(sys.argv[2]); action = sys.argv[3]; exp = sys.argv[4:]\n"
    "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
    "assert m.get_param('report-type') == 'delivery-status', m.get_param('report-type')\n"
    "parts = list(m.iter_parts())\n"
    "assert len(parts) == nparts, len(parts)\n"
    "assert parts[0].get_content_type() == 'text/plain'\n"
    "assert parts[0].get_content_charset() == 'us-ascii'\n"
    "assert 'This is the mail system at host mx2.example.net' in parts[0].get_content()\n"
    "ds = parts[1]\n"
    "assert ds.get_content_type() == 'message/delivery-status', ds.get_content_type()\n"
    "blocks = ds.get_payload()\n"
    "assert str(blocks[0]['Reporting-MTA']) == 'dns; mx2.example.net', blocks[0]['Reporting-MTA']\n"
    "assert str(blocks[0]['X-Backupmx-Queue-ID']) == '0ABCDEFGHJKMNPQR'\n"
    "rc = blocks[1:]\n"
    "assert len(rc) == len(exp) // 2, (len(rc), exp)\n"
    "for b, addr, st in zip(rc, exp[0::2], exp[1::2]):\n"
    "    assert str(b['Final-Recipient']) == addr, (str(b['Final-Recipient']), addr)\n"
    "    assert str(b['Status']) == st, (str(b['Status']), st)\n"
    "    assert str(b['Action']) == action, str(b['Action'])\n"
    "if nparts == 3:\n"
    "    assert parts[2].get_content_type() == 'text/rfc822-headers'\n"
    "for p in m.walk():\n"
    "    assert not p.defects, (p.get_content_type(), p.defects)\n"
    "    assert 'Bcc' not in p and 'X-Evil' not in p, 'injected header'\n"
    "assert m['To'].addresses[0].addr_spec == 'alice@sender.example', str(m['To'])\n";

/* Runs the parser over M; returns python's exit status. ARGS: the number
 * of parts, the action, then address and status pairs. */
static int py_check(const char *m, size_t len, const char *const *args, size_t nargs)
{
    char path[] = "/tmp/test_bounce.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, m, len), (ssize_t)len);
    close(fd);
    const char *argv[32] = {"python3", "-c", py_script, path};
    assert_true(nargs + 5 <= 32);
    for (size_t i = 0; i < nargs; i++)
        argv[4 + i] = args[i];
    argv[4 + nargs] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execvp("python3", (char *const *)argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void test_failed_one(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    struct bounce_rcpt r[] = {{
        .addr = "bob@example.com",
        .orcpt = "rfc822;bob+2Bx@example.com",
        .status = "5.1.1",
        .remote_mta = "mx1.example.com",
        .diagnostic = "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
        .last_attempt = NOW - 60,
    }};
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, r, 1, orig_std, sizeof orig_std - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    assert_non_null(strstr(m, "\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
    assert_null(strstr(m, "Content-Transfer-Encoding"));

    char *c;
    char *h = part(m, b, 0, &c);
    assert_non_null(strstr(h, "Content-Type: text/plain; charset=us-ascii\r\n"));
    assert_non_null(strstr(c, "This is the mail system at host " HOST " (a backup MX for\r\nexample.com)."));
    assert_non_null(strstr(c, "<bob@example.com>: host mx1.example.com said: 550 5.1.1"));
    free(h);

    h = part(m, b, 1, &c);
    assert_string_equal(h, "Content-Description: Delivery report\r\n"
                           "Content-Type: message/delivery-status\r\n");
    assert_non_null(strstr(c, "Reporting-MTA: dns; " HOST "\r\n"
                              "X-Backupmx-Queue-ID: 0ABCDEFGHJKMNPQR\r\n"
                              "Received-From-MTA: dns; client.example\r\n"
                              "Arrival-Date: "));
    assert_non_null(strstr(c, "\r\n\r\nFinal-Recipient: rfc822; bob@example.com\r\n"
                              "Original-Recipient: rfc822; bob+x@example.com\r\n"
                              "Action: failed\r\n"
                              "Status: 5.1.1\r\n"
                              "Remote-MTA: dns; mx1.example.com\r\n"
                              "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: Recipient address\r\n"
                              " rejected: User unknown\r\n"
                              "Last-Attempt-Date: "));
    assert_null(strstr(c, "Will-Retry-Until"));
    free(h);

    h = part(m, b, 2, &c);
    assert_non_null(strstr(h, "Content-Type: text/rfc822-headers\r\n"));
    /* the header section exactly, the body not at all */
    size_t hdrlen = (size_t)(strstr(orig_std, "\r\n\r\n") - orig_std) + 2;
    assert_int_equal(strlen(c), hdrlen);
    assert_memory_equal(c, orig_std, hdrlen);
    free(h);
    assert_null(strstr(m, "BODY-SECRET"));
    assert_null(strstr(m, "not a header"));

    const char *args[] = {"3", "failed", "rfc822; bob@example.com", "5.1.1"};
    assert_int_equal(py_check(m, len, args, 4), 0);
    free(m);
}

static void test_failed_three(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    struct bounce_rcpt r[] = {
        {.addr = "bob@example.com", .status = "5.1.1", .remote_mta = "mx1.example.com",
         .diagnostic = "550 5.1.1 no such user", .last_attempt = NOW - 60},
        {.addr = "carol@example.com", .status = "5.2.2", .remote_mta = "mx1.example.com",
         .diagnostic = "552-5.2.2 mailbox full\r\n552 5.2.2 try later", .last_attempt = NOW - 50},
        {.addr = "dave@Example.ORG", .status = "4.4.7",
         .diagnostic = "delivery time expired", .last_attempt = NOW - 40},
    };
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, r, 3, orig_std, sizeof orig_std - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    assert_int_equal(count_lines(m, "Final-Recipient: "), 3);
    assert_int_equal(count_lines(m, "Action: failed\r\n"), 3);
    assert_int_equal(count_lines(m, "Last-Attempt-Date: "), 3);
    assert_int_equal(count_lines(m, "Remote-MTA: dns; mx1.example.com\r\n"), 2);
    /* the lines of a multi-line reply are joined, not new fields */
    assert_non_null(strstr(m, "Diagnostic-Code: smtp; 552-5.2.2 mailbox full 552 5.2.2 try later\r\n"));
    /* our own reason is not an SMTP reply */
    assert_non_null(strstr(m, "Diagnostic-Code: X-Backupmx; delivery time expired\r\n"));
    assert_non_null(strstr(m, "(a backup MX for\r\nexample.com, example.org)."));
    const char *p1 = strstr(m, "Status: 5.1.1\r\n"), *p2 = strstr(m, "Status: 5.2.2\r\n"),
               *p3 = strstr(m, "Status: 4.4.7\r\n");
    assert_true(p1 && p2 && p3 && p1 < p2 && p2 < p3);
    assert_null(strstr(m, "BODY-SECRET"));

    const char *args[] = {"3", "failed",
                          "rfc822; bob@example.com", "5.1.1",
                          "rfc822; carol@example.com", "5.2.2",
                          "rfc822; dave@Example.ORG", "4.4.7"};
    assert_int_equal(py_check(m, len, args, 8), 0);
    free(m);
}

static void test_delayed(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    struct bounce_rcpt r[] = {
        {.addr = "bob@example.com", .status = "4.4.1", .remote_mta = NULL,
         .diagnostic = "connect to mx1.example.com[198.51.100.1]:25: Connection refused",
         .last_attempt = NOW - 60, .retry_until = NOW + 4 * 86400},
        {.addr = "erin@example.com", .status = "bogus", .diagnostic = NULL,
         .last_attempt = 0, .retry_until = NOW + 4 * 86400},
    };
    size_t len;
    char *m = build(BOUNCE_DELAYED, &env, r, 2, orig_std, sizeof orig_std - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    assert_non_null(strstr(m, "\r\nSubject: Delayed Mail (still being retried)\r\n"));
    assert_int_equal(count_lines(m, "Action: delayed\r\n"), 2);
    assert_int_equal(count_lines(m, "Action: failed"), 0);
    assert_int_equal(count_lines(m, "Will-Retry-Until: "), 2);
    assert_int_equal(count_lines(m, "Last-Attempt-Date: "), 1);
    assert_int_equal(count_lines(m, "Diagnostic-Code: "), 1);
    assert_int_equal(count_lines(m, "Status: 4.0.0\r\n"), 1); /* "bogus" replaced */
    assert_non_null(strstr(m, "WARNING ONLY"));
    assert_non_null(strstr(m, "Content-Description: Delayed Message Headers\r\n"));
    assert_null(strstr(m, "BODY-SECRET"));

    const char *args[] = {"3", "delayed",
                          "rfc822; bob@example.com", "4.4.1",
                          "rfc822; erin@example.com", "4.0.0"};
    assert_int_equal(py_check(m, len, args, 6), 0);
    free(m);
}

static void test_injection(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    env.client_name = "evil\r\nX-Evil: 1";
    env.client_addr = "192.0.2.7\r\nX-Evil: 2";
    struct bounce_rcpt r[] = {{
        .addr = "x\r\nBcc: evil@example.org",
        .orcpt = "rfc822;y+0D+0ABcc:+20e@example.org",
        .status = "5.1.1\r\nBcc: s",
        .remote_mta = "mx\r\nX-Evil: 3",
        .diagnostic = "550 no\r\nBcc: evil2@example.org\r\n\r\n--fake\r\n",
        .last_attempt = NOW,
    }};
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, r, 1, orig_std, sizeof orig_std - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    assert_int_equal(count_lines(m, "Bcc"), 0);
    assert_int_equal(count_lines(m, "X-Evil"), 0);
    assert_int_equal(count_lines(m, "--fake"), 0);
    assert_non_null(strstr(m, "Final-Recipient: rfc822; xBcc: evil@example.org\r\n"));
    assert_non_null(strstr(m, "Original-Recipient: rfc822; yBcc: e@example.org\r\n"));
    assert_non_null(strstr(m, "Status: 5.0.0\r\n"));
    assert_non_null(strstr(m, "Diagnostic-Code: smtp; 550 no Bcc: evil2@example.org --fake\r\n"));

    const char *args[] = {"3", "failed", "rfc822; xBcc: evil@example.org", "5.0.0"};
    assert_int_equal(py_check(m, len, args, 4), 0);
    free(m);
}

static void test_long_diagnostic(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    char *diag = malloc(5001);
    assert_non_null(diag);
    memcpy(diag, "550 ", 4);
    for (size_t i = 4; i < 5000; i++)  /* words, then one 2000-octet word */
        diag[i] = i < 2500 ? (i % 9 == 0 ? ' ' : 'w') : 'Z';
    diag[5000] = '\0';
    char *addr = malloc(1501);
    assert_non_null(addr);
    memset(addr, 'a', 1500);
    memcpy(addr + 1480, "@example.com", 13);
    struct bounce_rcpt r[] = {
        {.addr = "bob@example.com", .status = "5.0.0", .remote_mta = "mx1.example.com",
         .diagnostic = diag},
        {.addr = addr, .status = "5.0.0", .diagnostic = diag},
    };
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, r, 2, orig_std, sizeof orig_std - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    assert_int_equal(count_lines(m, "Diagnostic-Code: smtp; 550 wwww"), 2);
    assert_non_null(strstr(m, "ZZZ..."));  /* cut at 4000 octets */

    /* the over-long address is cut: the parser still sees one recipient
     * block each */
    char want[600];
    snprintf(want, sizeof want, "rfc822; %.512s", addr);
    const char *args[] = {"3", "failed", "rfc822; bob@example.com", "5.0.0", want, "5.0.0"};
    assert_int_equal(py_check(m, len, args, 6), 0);
    free(m);
    free(diag);
    free(addr);
}

static void test_long_header_line(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    char *orig = malloc(4000);
    assert_non_null(orig);
    strcpy(orig, "X-Long: ");
    size_t o = strlen(orig);
    memset(orig + o, 'L', 1992);
    o += 1992;
    strcpy(orig + o, "\r\nSubject: after long\r\n\r\nBODY-SECRET\r\n");
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, &(struct bounce_rcpt){.addr = "bob@example.com",
                    .status = "5.1.1"}, 1, orig, strlen(orig), &len);
    char b[128];
    check_structure(m, len, 3, b);
    char *c;
    char *h = part(m, b, 2, &c);
    assert_int_equal(strncmp(c, "X-Long: LLL", 11), 0);
    assert_int_equal(strcspn(c, "\r"), 998);
    assert_string_equal(c + 998, "\r\nSubject: after long\r\n");
    free(h);
    assert_null(strstr(m, "BODY-SECRET"));
    const char *args[] = {"3", "failed", "rfc822; bob@example.com", "5.1.1"};
    assert_int_equal(py_check(m, len, args, 4), 0);
    free(m);
    free(orig);
}

static void test_bare_lf(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    const char orig[] = "Subject: lf only\nFrom: a@b.example\rX-Cr: bare\r\n\nBODY-SECRET\n";
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, &(struct bounce_rcpt){.addr = "bob@example.com",
                    .status = "5.1.1"}, 1, orig, sizeof orig - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    char *c;
    char *h = part(m, b, 2, &c);
    assert_string_equal(c, "Subject: lf only\r\nFrom: a@b.example\r\nX-Cr: bare\r\n");
    free(h);
    assert_null(strstr(m, "BODY-SECRET"));
    const char *args[] = {"3", "failed", "rfc822; bob@example.com", "5.1.1"};
    assert_int_equal(py_check(m, len, args, 4), 0);
    free(m);
}

static void test_empty_orig(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    const char *origs[] = {"", NULL, "\r\nonly a body\r\n"};
    for (size_t i = 0; i < 3; i++) {
        size_t len;
        char *m = build(BOUNCE_FAILED, &env, &(struct bounce_rcpt){.addr = "bob@example.com",
                        .status = "5.1.1"}, 1, origs[i], origs[i] ? strlen(origs[i]) : 0, &len);
        char b[128];
        check_structure(m, len, 2, b);
        assert_null(strstr(m, "text/rfc822-headers"));
        assert_null(strstr(m, "only a body"));
        const char *args[] = {"2", "failed", "rfc822; bob@example.com", "5.1.1"};
        assert_int_equal(py_check(m, len, args, 4), 0);
        free(m);
    }
}

/* No empty line: all of it is headers, up to the 64 KB cap. */
static void test_no_body_and_cap(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    const char orig[] = "Subject: no body\r\nX-Last: unterminated";
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, &(struct bounce_rcpt){.addr = "bob@example.com",
                    .status = "5.1.1"}, 1, orig, sizeof orig - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    char *c;
    char *h = part(m, b, 2, &c);
    assert_string_equal(c, "Subject: no body\r\nX-Last: unterminated\r\n");
    free(h);
    free(m);

    /* 200 KB of header lines, no body: cut at a line end near 64 KB */
    size_t big = 200 * 1024;
    char *o = malloc(big + 1);
    assert_non_null(o);
    for (size_t i = 0; i < big; i += 20)
        memcpy(o + i, "X-Filler: 123456789\n", 20);
    o[big] = '\0';
    m = build(BOUNCE_FAILED, &env, &(struct bounce_rcpt){.addr = "bob@example.com",
              .status = "5.1.1"}, 1, o, big, &len);
    check_structure(m, len, 3, b);
    h = part(m, b, 2, &c);
    size_t cl = strlen(c);
    assert_true(cl > 60 * 1024 && cl < 72 * 1024);
    assert_int_equal(cl % 21, 0);  /* whole lines */
    free(h);
    free(m);
    free(o);
}

static void test_8bit(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    env.flags = QENV_SMTPUTF8;
    const char orig[] = "Subject: gr\xc3\xbc\xc3\x9f" "e\r\nFrom: j\xc3\xb6rg@example.com\r\n\r\nbody\r\n";
    struct bounce_rcpt r = {.addr = "b\xc3\xb6" "b@example.com", .status = "5.1.1",
                            .diagnostic = "550 unknown b\xc3\xb6" "b"};
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, &r, 1, orig, sizeof orig - 1, &len);
    char b[128];
    check_structure(m, len, 3, b);
    const char *eoh = strstr(m, "\r\n\r\n");
    const char *cte = strstr(m, "Content-Transfer-Encoding: 8bit\r\n");
    assert_true(cte != NULL && cte < eoh);
    char *c;
    char *h = part(m, b, 2, &c);
    assert_non_null(strstr(h, "Content-Transfer-Encoding: 8bit\r\n"));
    assert_string_equal(c, "Subject: gr\xc3\xbc\xc3\x9f" "e\r\nFrom: j\xc3\xb6rg@example.com\r\n");
    free(h);
    /* only the returned headers have 8-bit octets */
    h = part(m, b, 0, &c);
    for (const char *p = c; *p; p++)
        assert_true((unsigned char)*p < 0x80);
    assert_non_null(strstr(c, "<b\\x{F6}b@example.com>:"));
    free(h);
    assert_non_null(strstr(m, "Final-Recipient: utf-8; b\\x{F6}b@example.com\r\n"));
    assert_non_null(strstr(m, "Diagnostic-Code: smtp; 550 unknown b??b\r\n"));

    struct evbuffer *ob = evbuffer_new();
    evbuffer_add(ob, orig, sizeof orig - 1);
    assert_int_equal(bounce_qenv_flags(&env, ob), QENV_8BITMIME);
    evbuffer_free(ob);
    assert_int_equal(bounce_qenv_flags(&env, NULL), 0);
    struct queue_envelope e8 = env;
    e8.sender = "j\xc3\xb6rg@example.com";
    assert_int_equal(bounce_qenv_flags(&e8, NULL), QENV_8BITMIME | QENV_SMTPUTF8);

    const char *args[] = {"3", "failed", "utf-8; b\\x{F6}b@example.com", "5.1.1"};
    assert_int_equal(py_check(m, len, args, 4), 0);
    free(m);
}

/* A 2000-octet header line of 2-octet UTF-8 is not cut inside a character. */
static void test_utf8_cut(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    char orig[2100];
    strcpy(orig, "X: ");             /* odd offset: 998 falls inside a pair */
    size_t o = 3;
    for (int i = 0; i < 1000; i++, o += 2)
        memcpy(orig + o, "\xc3\xa9", 2);
    strcpy(orig + o, "\r\n\r\n");
    size_t len;
    char *m = build(BOUNCE_FAILED, &env, &(struct bounce_rcpt){.addr = "bob@example.com",
                    .status = "5.1.1"}, 1, orig, strlen(orig), &len);
    char b[128];
    check_structure(m, len, 3, b);
    char *c;
    char *h = part(m, b, 2, &c);
    assert_int_equal(strcspn(c, "\r"), 997);
    assert_true((unsigned char)c[996] == 0xa9);
    free(h);
    free(m);
}

static void test_refused(void **state)
{
    (void)state;
    struct queue_envelope env = test_env();
    struct bounce_rcpt r = {.addr = "bob@example.com", .status = "5.1.1"};
    struct evbuffer *out = evbuffer_new();
    env.sender = "";
    errno = 0;
    assert_int_equal(bounce_build(out, BOUNCE_FAILED, HOST, "X", &env, &r, 1, NULL, NOW), -1);
    assert_int_equal(errno, EINVAL);
    env = test_env();
    errno = 0;
    assert_int_equal(bounce_build(out, BOUNCE_FAILED, HOST, "X", &env, &r, 0, NULL, NOW), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failed_one),
        cmocka_unit_test(test_failed_three),
        cmocka_unit_test(test_delayed),
        cmocka_unit_test(test_injection),
        cmocka_unit_test(test_long_diagnostic),
        cmocka_unit_test(test_long_header_line),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_empty_orig),
        cmocka_unit_test(test_no_body_and_cap),
        cmocka_unit_test(test_8bit),
        cmocka_unit_test(test_utf8_cut),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
