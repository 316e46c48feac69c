/* A small chained hash of client addresses with live connection counts. */
#include "ipcount.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IPCOUNT_BUCKETS 1024

struct ipentry {
    struct ipentry *next;
    unsigned count;
    char ip[INET6_ADDRSTRLEN];
};

struct ipcount {
    struct ipentry *bucket[IPCOUNT_BUCKETS];
};

static unsigned ip_hash(const char *ip)
{
    unsigned h = 2166136261u;    /* FNV-1a */
    for (; *ip; ip++)
        h = (h ^ (unsigned char)*ip) * 16777619u;
    return h % IPCOUNT_BUCKETS;
}

static struct ipentry **ip_find(struct ipcount *t, const char *ip)
{
    struct ipentry **e = &t->bucket[ip_hash(ip)];
    while (*e != NULL && strcmp((*e)->ip, ip) != 0)
        e = &(*e)->next;
    return e;
}

struct ipcount *ipcount_new(void)
{
    return calloc(1, sizeof(struct ipcount));
}

void ipcount_free(struct ipcount *t)
{
    if (t == NULL)
        return;
    for (size_t b = 0; b < IPCOUNT_BUCKETS; b++) {
        while (t->bucket[b] != NULL) {
            struct ipentry *e = t->bucket[b];
            t->bucket[b] = e->next;
            free(e);
        }
    }
    free(t);
}

unsigned ipcount_acquire(struct ipcount *t, const char *ip)
{
    struct ipentry **e = ip_find(t, ip);
    if (*e == NULL) {
        *e = calloc(1, sizeof **e);
        if (*e == NULL)
            return 0;
        snprintf((*e)->ip, sizeof (*e)->ip, "%s", ip);
    }
    return ++(*e)->count;
}

void ipcount_release(struct ipcount *t, const char *ip)
{
    struct ipentry **e = ip_find(t, ip);
    if (*e == NULL || --(*e)->count > 0)
        return;
    struct ipentry *dead = *e;
    *e = dead->next;
    free(dead);
}
