/* Internals of mailbox.c shared with mbox_sync.c. */
#ifndef BMX_MBOX_PRIVATE_H
#define BMX_MBOX_PRIVATE_H

#include <stddef.h>
#include <stdint.h>

#include "mailbox.h"

struct mailbox {
    char *dir;
    uint32_t uidvalidity;
    uint32_t uidnext;
    struct mbox_msg *msgs;      /* in UID order */
    size_t count, cap;
};

/* Moves new/ into cur/, makes sure every file of cur/ has a UID in
 * dovecot-uidlist (writing it under its lock when some have none) and
 * appends to MB the messages whose UIDs are above its last one. *ADDED
 * (if not NULL) gets how many. -1 with a reason in ERR. */
int mbox_sync(struct mailbox *mb, size_t *added, char *err, size_t errlen);

/* The current name in DIR/cur of the file whose base is BASE (BASELEN
 * bytes), malloc'd into *NAME. -1 with errno (ENOENT: no such file). */
int mbox_find_base(const char *dir, const char *base, size_t baselen, char **name);

#endif
