/* The control socket's line protocol, shared by the daemon (control.c) and
 * bmxq (bmxq.c), and the queue reports (list, show, stats) that both make:
 * the daemon for a client, bmxq itself from a stopped daemon's queue, so the
 * output is the same either way.
 *
 * Protocol (bmxq(1), CONTROL PROTOCOL): the client sends one request line
 * "VERB [ARG ...]\n" (at most CTL_LINE_MAX bytes, arguments separated by
 * single spaces, printable ASCII only). The daemon answers with data lines,
 * then one terminator line:
 *   "|TEXT\n"         data: TEXT followed by a newline
 *   "+TEXT\n"         data: TEXT with no newline (only the last fragment of
 *                     an output that does not end in one)
 *   "ok[ N]\n"        done (N: how many messages a command affected)
 *   "error TEXT\n"    failed; TEXT says why ("no such message: ID",
 *                     "permission denied", "unknown command", ...)
 * A connection may carry several requests, one after the other. */
#ifndef BMX_CONTROL_PROTO_H
#define BMX_CONTROL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue.h"

struct evbuffer;
struct sched_stats;

#define CTL_LINE_MAX 1024
#define CTL_ARGS_MAX 4
#define CTL_ARG_MAX 255

struct ctl_request {
    const char *verb;
    int argc;
    const char *argv[CTL_ARGS_MAX];
};

/* Splits LINE (no newline; changed in place) into a verb and arguments.
 * 0, or -1 when it is empty, has more than CTL_ARGS_MAX arguments, an empty
 * or too long one, or a byte outside printable ASCII. */
int ctl_request_parse(char *line, struct ctl_request *req);

/* Moves TEXT to OUT as data lines ("|LINE" for each complete line). A last
 * fragment without a newline stays in TEXT, unless FINAL: then it is sent
 * as "+FRAGMENT". */
void ctl_frame(struct evbuffer *out, struct evbuffer *text, bool final);

/* S as a JSON string with its quotes (null for NULL): control characters,
 * quote and backslash escaped, each byte that is not part of valid UTF-8
 * replaced by U+FFFD, so the output is valid UTF-8 JSON whatever S holds. */
void ctl_json_string(struct evbuffer *out, const char *s);
/* S for a terminal: valid UTF-8 kept, control characters, DEL and bytes
 * that are not valid UTF-8 written as \xNN. */
void ctl_text_string(struct evbuffer *out, const char *s);

/* True when S has the syntax of a queue id (QUEUE_ID_LEN characters of the
 * id alphabet). Whether the message exists is another matter. */
bool ctl_is_id(const char *s);
/* True when the domain of ADDR (after its last '@') is DOMAIN, ignoring
 * ASCII case and a trailing dot on DOMAIN. */
bool ctl_domain_match(const char *addr, const char *domain);
/* "deferred", "active", "held", "done". */
const char *ctl_state_name(enum rcpt_state st);

/* ---- reports ------------------------------------------------------------ */

/* True while recipient IDX of message ID is being delivered (the daemon
 * asks its scheduler; offline there is no such function). */
typedef bool (*report_active_fn)(void *arg, const char *id, uint16_t idx);

enum report_fmt { REPORT_TEXT, REPORT_JSON };

struct report_list {
    enum report_fmt fmt;
    char domain[CTL_ARG_MAX + 1];    /* filter; "" = every message */
    report_active_fn active;
    void *active_arg;
    uint64_t messages, bytes;        /* listed so far */
};

void report_list_init(struct report_list *r, enum report_fmt fmt,
                      const char *domain, report_active_fn active, void *arg);
/* Appends ENV's entry (with its pending recipients: those in the domain
 * when filtering; a message with none of those is left out). */
void report_list_add(struct report_list *r, const struct queue_envelope *env,
                     struct evbuffer *out);
/* The summary ("-- N Kbytes in M requests." or "Mail queue is empty");
 * nothing in JSON. */
void report_list_end(struct report_list *r, struct evbuffer *out);

/* `show`: the envelope and the header (up to the first empty line) of
 * BODY, or with WHOLE the stored message exactly (BODY is drained). */
void report_show(const struct queue_envelope *env, struct evbuffer *body,
                 bool whole, report_active_fn active, void *arg,
                 struct evbuffer *out);

struct report_domain {
    char name[256];
    uint64_t deferred, held, active;
};

struct report_stats {
    report_active_fn active;
    void *active_arg;
    uint64_t messages, recipients, bytes;
    int64_t oldest;                  /* arrival of the oldest; 0 = none */
    struct report_domain *dom;       /* sorted by name */
    size_t ndom, domcap;
    bool nomem;
};

void report_stats_init(struct report_stats *r, report_active_fn active,
                       void *arg);
void report_stats_add(struct report_stats *r, const struct queue_envelope *env);
/* Writes the report as of NOW; SS is the scheduler's counters, or NULL when
 * the daemon is not running. */
void report_stats_end(struct report_stats *r, const struct sched_stats *ss,
                      int64_t now, struct evbuffer *out);
void report_stats_free(struct report_stats *r);

#endif
