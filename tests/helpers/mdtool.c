/* mdtool: test helper that drives the catch-all Maildir code (maildir.h,
 * mailbox.h) from the command line, for the Dovecot compatibility tests.
 *   mdtool deliver DIR FILE [HOST]   maildir_deliver of FILE (bare LF
 *                                    becomes CRLF); prints the base name
 *   mdtool list DIR                  mailbox_open, then one line per
 *                                    message: "uid uidvalidity size flags name"
 *                                    (flags as Maildir letters, "-" if none)
 *   mdtool status DIR                "uidvalidity=V uidnext=N messages=C"
 *   mdtool flags DIR UID LETTERS     mailbox_set_flags ("-" clears them)
 *   mdtool expunge DIR UID           mailbox_expunge
 * Exit status: 0 ok, 1 failure, 2 usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "mailbox.h"
#include "maildir.h"

static int usage(void)
{
    fprintf(stderr, "usage: mdtool deliver DIR FILE [HOST] | list DIR | status DIR |\n"
                    "       flags DIR UID LETTERS | expunge DIR UID\n");
    return 2;
}

/* FILE's bytes with every bare LF turned into CRLF. */
static char *read_crlf(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *out = NULL;
    size_t cap = 0, n = 0;
    int c, prev = 0;
    while ((c = getc(f)) != EOF) {
        if (n + 2 >= cap) {
            char *grown = realloc(out, cap = cap ? cap * 2 : 4096);
            if (!grown) {
                free(out);
                fclose(f);
                return NULL;
            }
            out = grown;
        }
        if (c == '\n' && prev != '\r')
            out[n++] = '\r';
        out[n++] = (char)c;
        prev = c;
    }
    fclose(f);
    *len = n;
    return out ? out : calloc(1, 1);
}

static int cmd_deliver(int argc, char **argv)
{
    size_t len;
    char name[256];
    char *data = read_crlf(argv[3], &len);
    if (!data) {
        perror(argv[3]);
        return 1;
    }
    struct iovec iov = { data, len };
    int rc = maildir_deliver(argv[2], argc > 4 ? argv[4] : "mdtool.test", &iov, 1, name,
                             sizeof name);
    free(data);
    if (rc < 0) {
        fprintf(stderr, "maildir_deliver %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    printf("%s\n", name);
    return 0;
}

static const char *letters(unsigned flags, char *buf)
{
    char *p = buf;
    static const char l[] = "DFPRST";
    const unsigned f[] = { MF_DRAFT, MF_FLAGGED, MF_PASSED, MF_ANSWERED, MF_SEEN, MF_DELETED };
    for (int i = 0; i < 6; i++)
        if (flags & f[i])
            *p++ = l[i];
    *p = '\0';
    return p == buf ? "-" : buf;
}

static int parse_letters(const char *s, unsigned *flags)
{
    static const char l[] = "DFPRST";
    const unsigned f[] = { MF_DRAFT, MF_FLAGGED, MF_PASSED, MF_ANSWERED, MF_SEEN, MF_DELETED };
    *flags = 0;
    if (strcmp(s, "-") == 0)
        return 0;
    for (; *s; s++) {
        const char *p = strchr(l, *s);
        if (!p)
            return -1;
        *flags |= f[p - l];
    }
    return 0;
}

static long find_uid(struct mailbox *mb, const char *arg)
{
    char *end;
    unsigned long uid = strtoul(arg, &end, 10);
    long i = *end ? -1 : mailbox_find_uid(mb, (uint32_t)uid);
    if (i < 0)
        fprintf(stderr, "no message with UID %s\n", arg);
    return i;
}

static int run(struct mailbox *mb, int argc, char **argv)
{
    const char *cmd = argv[1];
    char buf[8];
    if (strcmp(cmd, "list") == 0) {
        for (size_t i = 0; i < mailbox_count(mb); i++) {
            const struct mbox_msg *m = mailbox_msg(mb, i);
            printf("%u %u %llu %s %s\n", m->uid, mailbox_uidvalidity(mb),
                   (unsigned long long)m->size, letters(m->flags, buf), m->name);
        }
        return 0;
    }
    if (strcmp(cmd, "status") == 0) {
        printf("uidvalidity=%u uidnext=%u messages=%zu\n", mailbox_uidvalidity(mb),
               mailbox_uidnext(mb), mailbox_count(mb));
        return 0;
    }
    long i = argc > 3 ? find_uid(mb, argv[3]) : -1;
    if (i < 0)
        return 1;
    unsigned flags;
    if (strcmp(cmd, "flags") == 0 && argc == 5 && parse_letters(argv[4], &flags) == 0)
        return mailbox_set_flags(mb, (size_t)i, flags) == 0 ? 0 : (perror("set_flags"), 1);
    if (strcmp(cmd, "expunge") == 0 && argc == 4)
        return mailbox_expunge(mb, (size_t)i) == 0 ? 0 : (perror("expunge"), 1);
    return usage();
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    if (strcmp(argv[1], "deliver") == 0)
        return argc >= 4 && argc <= 5 ? cmd_deliver(argc, argv) : usage();
    if (strcmp(argv[1], "list") && strcmp(argv[1], "status") && strcmp(argv[1], "flags") &&
        strcmp(argv[1], "expunge"))
        return usage();
    char err[512];
    struct mailbox *mb = mailbox_open(argv[2], err, sizeof err);
    if (!mb) {
        fprintf(stderr, "mailbox_open: %s\n", err);
        return 1;
    }
    int rc = run(mb, argc, argv);
    mailbox_close(mb);
    return rc;
}
