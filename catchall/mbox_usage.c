/* maildir_usage (declared in maildir.h): the bytes in new/ and cur/, for
 * the quota check at RCPT time. A walk stats nothing when names carry S=,
 * and the result is kept per directory until new/ or cur/ changes. */
#include "maildir.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "mbox_fs.h"

struct usage_entry {
    char *dir;
    struct timespec new_mtime, cur_mtime;
    uint64_t bytes;
};

static pthread_mutex_t usage_mu = PTHREAD_MUTEX_INITIALIZER;
static struct usage_entry *usage_cache;
static size_t usage_count;

static bool same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static int add_size(int dirfd, const char *name, void *arg)
{
    uint64_t *bytes = arg, size = 0;
    struct stat st;
    maildir_parse_name(name, NULL, &size, NULL);
    if (size == 0 && fstatat(dirfd, name, &st, 0) == 0)
        size = (uint64_t)st.st_size;
    *bytes += size;
    return 0;
}

static int dir_mtime(const char *dir, const char *sub, struct timespec *ts)
{
    char path[4096];
    struct stat st;
    if (mbox_path(path, sizeof path, dir, sub, NULL) < 0 || stat(path, &st) < 0)
        return -1;
    *ts = st.st_mtim;
    return 0;
}

static struct usage_entry *cache_find(const char *dir)
{
    for (size_t i = 0; i < usage_count; i++)
        if (strcmp(usage_cache[i].dir, dir) == 0)
            return &usage_cache[i];
    return NULL;
}

/* A change within the same clock tick as the mtime we saw would leave the
 * mtime as it is, so a directory touched in the last two seconds is not
 * trusted to key the cache. */
static bool settled(const struct timespec *a, const struct timespec *b)
{
    time_t now = time(NULL);
    return a->tv_sec < now - 1 && b->tv_sec < now - 1;
}

static void cache_store(const char *dir, const struct timespec *nm, const struct timespec *cm,
                        uint64_t bytes)
{
    struct usage_entry *e = cache_find(dir);
    if (!e) {
        struct usage_entry *grown = realloc(usage_cache, (usage_count + 1) * sizeof *grown);
        char *copy = strdup(dir);
        if (!grown || !copy) {
            usage_cache = grown ? grown : usage_cache;
            free(copy);
            return;
        }
        usage_cache = grown;
        e = &usage_cache[usage_count++];
        e->dir = copy;
    }
    e->new_mtime = *nm;
    e->cur_mtime = *cm;
    e->bytes = bytes;
}

int maildir_usage(const char *dir, uint64_t *bytes)
{
    struct timespec nm, cm;
    uint64_t total = 0;

    if (dir_mtime(dir, "new", &nm) < 0 || dir_mtime(dir, "cur", &cm) < 0)
        return -1;
    pthread_mutex_lock(&usage_mu);
    struct usage_entry *e = cache_find(dir);
    bool hit = e && same_time(&e->new_mtime, &nm) && same_time(&e->cur_mtime, &cm);
    if (hit)
        total = e->bytes;
    pthread_mutex_unlock(&usage_mu);
    if (!hit) {
        if (mbox_foreach(dir, "new", add_size, &total) < 0 ||
            mbox_foreach(dir, "cur", add_size, &total) < 0)
            return -1;
        pthread_mutex_lock(&usage_mu);
        if (settled(&nm, &cm))
            cache_store(dir, &nm, &cm, total);
        pthread_mutex_unlock(&usage_mu);
    }
    *bytes = total;
    return 0;
}
