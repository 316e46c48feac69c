/* One SMTP server session: an explicit state machine over a bufferevent. */
#ifndef BMX_SMTP_SESSION_H
#define BMX_SMTP_SESSION_H

#include <sys/socket.h>
#include <event2/util.h>

struct smtp_server;

/* Takes ownership of FD. REFUSE is NULL, or a 421 reply to send before
 * closing (connection limits). */
void smtp_session_start(struct smtp_server *srv, evutil_socket_t fd,
                        const struct sockaddr *sa, socklen_t salen,
                        const char *refuse);

/* Ends every session at shutdown. */
void smtp_session_free_all(struct smtp_server *srv);

#endif
