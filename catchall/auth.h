/* Mailbox logins for POP3 and IMAP: crypt(3) password checks and the
 * per-IP brake on guessing (a growing delay after each failure, and a
 * lock-out after too many failures in a window). */
#ifndef BMX_AUTH_H
#define BMX_AUTH_H

#include <stdbool.h>

#include "config.h"

enum auth_result {
    AUTH_OK,
    AUTH_FAIL,          /* unknown mailbox or wrong password */
    AUTH_BLOCKED,       /* too many failures from this IP: refused unchecked */
};

/* Checks USER/PASS for a client at IP. On AUTH_OK, *MB is the mailbox.
 * *DELAY_MS is how long to wait before answering (0 on success). Every
 * failure is logged with the name tried and the client address; the
 * session logs the successful login. */
enum auth_result auth_login(const struct bmx_config *cfg, const char *proto, const char *ip,
                            const char *user, const char *pass,
                            const struct bmx_mailbox **mb, unsigned *delay_ms);

/* Decodes a SASL PLAIN response (RFC 4616), base64 already removed:
 * authzid NUL authcid NUL passwd. AUTHZID must be empty or equal AUTHCID.
 * Trailing NUL bytes (decoded base64 padding) are allowed. Returns false
 * on bad syntax. The strings are in static storage, valid until the next
 * call. */
bool auth_plain_split(char *buf, size_t len, const char **user, const char **pass);

#endif
