/* Valid-recipient list: a sorted array of lower-cased addresses, searched
 * with bsearch. Local parts are matched case-insensitively, as operators
 * expect (and as Postfix's lookup tables do). */
#include "rcptlist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "addr.h"
#include "log.h"

struct rcptlist {
    char *path;
    char **addr;
    size_t n;
    bool loaded;
    struct stat st;              /* of the file when it was loaded */
    time_t checked;
};

struct rcptlist *rcptlist_new(const char *path)
{
    struct rcptlist *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->path = strdup(path);
    if (l->path == NULL) {
        free(l);
        return NULL;
    }
    return l;
}

static void free_addrs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void rcptlist_free(struct rcptlist *l)
{
    if (l == NULL)
        return;
    free_addrs(l->addr, l->n);
    free(l->path);
    free(l);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Trims comments and blanks; returns NULL for an empty line. */
static char *clean_line(char *s)
{
    char *hash = strchr(s, '#');
    if (hash != NULL)
        *hash = '\0';
    s += strspn(s, " \t\r\n");
    size_t n = strlen(s);
    while (n > 0 && strchr(" \t\r\n", s[n - 1]) != NULL)
        s[--n] = '\0';
    if (n > 0 && s[0] == '<' && s[n - 1] == '>') {
        s[n - 1] = '\0';
        s++;
    }
    return *s ? s : NULL;
}

static int load(struct rcptlist *l, const struct stat *st)
{
    FILE *f = fopen(l->path, "r");
    if (f == NULL)
        return -1;
    char **v = NULL;
    size_t n = 0, cap = 0;
    char *line = NULL;
    size_t linecap = 0;
    int rc = 0;
    while (getline(&line, &linecap, f) >= 0) {
        char *a = clean_line(line);
        if (a == NULL)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = realloc(v, cap * sizeof *v);
            if (nv == NULL) { rc = -1; break; }
            v = nv;
        }
        if ((v[n] = strdup(a)) == NULL) { rc = -1; break; }
        addr_lower(v[n]);
        n++;
    }
    if (ferror(f))
        rc = -1;
    free(line);
    fclose(f);
    if (rc != 0) {
        free_addrs(v, n);
        return -1;
    }
    qsort(v, n, sizeof *v, cmp_str);
    free_addrs(l->addr, l->n);
    l->addr = v;
    l->n = n;
    l->st = *st;
    l->loaded = true;
    log_info("recipient list %s loaded: %zu addresses", l->path, n);
    return 0;
}

static bool changed(const struct rcptlist *l, const struct stat *st)
{
    return !l->loaded || st->st_ino != l->st.st_ino || st->st_size != l->st.st_size
           || st->st_mtim.tv_sec != l->st.st_mtim.tv_sec
           || st->st_mtim.tv_nsec != l->st.st_mtim.tv_nsec;
}

static void refresh(struct rcptlist *l)
{
    time_t now = time(NULL);
    if (l->loaded && now == l->checked)
        return;
    l->checked = now;
    struct stat st;
    if (stat(l->path, &st) != 0) {
        log_warn("recipient list %s: %s%s", l->path, strerror(errno),
                 l->loaded ? " (keeping the last good list)" : "");
        return;
    }
    if (changed(l, &st) && load(l, &st) != 0)
        log_warn("recipient list %s: cannot read: %s%s", l->path, strerror(errno),
                 l->loaded ? " (keeping the last good list)" : "");
}

int rcptlist_contains(struct rcptlist *l, const char *addr)
{
    refresh(l);
    if (!l->loaded)
        return -1;
    char key[ADDR_PATH_MAX + 8];
    snprintf(key, sizeof key, "%s", addr);
    addr_lower(key);
    const char *k = key;
    return bsearch(&k, l->addr, l->n, sizeof *l->addr, cmp_str) != NULL;
}
