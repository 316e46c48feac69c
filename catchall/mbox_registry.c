/* The per-process registries of mailbox.h: POP3's maildrop locks and the
 * IDLE watches. Both are used from the event loop's thread only. */
#include "mailbox.h"

#include <stdlib.h>
#include <string.h>

/* ---- maildrop locks ---------------------------------------------------- */

/* A handful of mailboxes at most: a plain array is enough. */
static char **locked;
static size_t nlocked;

static long lock_index(const char *name)
{
    for (size_t i = 0; i < nlocked; i++)
        if (strcmp(locked[i], name) == 0)
            return (long)i;
    return -1;
}

bool mailbox_lock(const char *name)
{
    if (lock_index(name) >= 0)
        return false;
    char **grown = realloc(locked, (nlocked + 1) * sizeof *grown);
    if (!grown)
        return false;
    locked = grown;
    if (!(locked[nlocked] = strdup(name)))
        return false;
    nlocked++;
    return true;
}

void mailbox_unlock(const char *name)
{
    long i = lock_index(name);
    if (i < 0)
        return;
    free(locked[i]);
    locked[i] = locked[--nlocked];
    if (nlocked == 0) {
        free(locked);
        locked = NULL;
    }
}

/* ---- IDLE watches ---------------------------------------------------------- */

struct mailbox_watch {
    struct mailbox_watch *next;
    char *dir;
    void (*cb)(void *arg);
    void *arg;
    bool dead;          /* removed during a notify: freed when it ends */
};

static struct mailbox_watch *watches;
static int notify_depth;

struct mailbox_watch *mailbox_watch_add(const char *dir, void (*cb)(void *arg), void *arg)
{
    struct mailbox_watch *w = calloc(1, sizeof *w);
    if (!w || !(w->dir = strdup(dir))) {
        free(w);
        return NULL;
    }
    w->cb = cb;
    w->arg = arg;
    w->next = watches;      /* at the head: a notify running now skips it */
    watches = w;
    return w;
}

static void unlink_watch(struct mailbox_watch *w)
{
    for (struct mailbox_watch **p = &watches; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    free(w->dir);
    free(w);
}

void mailbox_watch_remove(struct mailbox_watch *w)
{
    if (!w)
        return;
    if (notify_depth > 0)
        w->dead = true;     /* notify may be standing on it */
    else
        unlink_watch(w);
}

static void sweep_dead(void)
{
    struct mailbox_watch **p = &watches;
    while (*p) {
        struct mailbox_watch *w = *p;
        if (w->dead) {
            *p = w->next;
            free(w->dir);
            free(w);
        } else {
            p = &w->next;
        }
    }
}

/* Callbacks may remove any watch (their own included) and add new ones;
 * nothing is freed until the outermost notify returns. */
void mailbox_notify(const char *dir)
{
    notify_depth++;
    for (struct mailbox_watch *w = watches; w; w = w->next)
        if (!w->dead && strcmp(w->dir, dir) == 0)
            w->cb(w->arg);
    if (--notify_depth == 0)
        sweep_dead();
}
