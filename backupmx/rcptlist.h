/* A domain's list of valid recipients, from a file with one address per line
 * ('#' starts a comment). Re-read when the file changes, at most once a
 * second; a broken re-read keeps the last good list. */
#ifndef BMX_RCPTLIST_H
#define BMX_RCPTLIST_H

#include <stdbool.h>

struct rcptlist;

struct rcptlist *rcptlist_new(const char *path);
void rcptlist_free(struct rcptlist *l);

/* 1: listed, 0: not listed, -1: no usable list (never loaded). */
int rcptlist_contains(struct rcptlist *l, const char *addr);

#endif
