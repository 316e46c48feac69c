/* CIDR matching on binary addresses (inet_pton), v4 and v6; a v4-mapped v6
 * client address ("::ffff:192.0.2.1") matches v4 entries. */
#include "cidr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bin {
    int family;
    unsigned char a[16];
};

static bool parse_ip(const char *s, struct bin *b)
{
    if (inet_pton(AF_INET, s, b->a) == 1) {
        b->family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, s, b->a) != 1)
        return false;
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(b->a, mapped, 12) == 0) {
        memmove(b->a, b->a + 12, 4);
        b->family = AF_INET;
        return true;
    }
    b->family = AF_INET6;
    return true;
}

bool cidr_match(const char *spec, const char *ip)
{
    char net[64];
    snprintf(net, sizeof net, "%s", spec);
    char *slash = strchr(net, '/');
    struct bin n, a;
    if (slash != NULL)
        *slash = '\0';
    if (!parse_ip(net, &n) || !parse_ip(ip, &a) || n.family != a.family)
        return false;
    int max = n.family == AF_INET ? 32 : 128;
    int len = slash ? atoi(slash + 1) : max;
    if (len < 0 || len > max)
        return false;
    int bytes = len / 8, bits = len % 8;
    if (memcmp(n.a, a.a, (size_t)bytes) != 0)
        return false;
    if (bits == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - bits));
    return (n.a[bytes] & mask) == (a.a[bytes] & mask);
}

bool cidr_list_match(const struct strlist *list, const char *ip)
{
    for (size_t i = 0; i < list->n; i++)
        if (cidr_match(list->v[i], ip))
            return true;
    return false;
}
