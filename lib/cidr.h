/* Address-in-network checks for access lists ("192.0.2.1", "198.51.100.0/24",
 * "2001:db8::/64"). */
#ifndef BMX_CIDR_H
#define BMX_CIDR_H

#include <stdbool.h>

#include "config.h"

/* True when the textual address IP lies in SPEC. */
bool cidr_match(const char *spec, const char *ip);
/* True when IP matches any entry of LIST. */
bool cidr_list_match(const struct strlist *list, const char *ip);

#endif
