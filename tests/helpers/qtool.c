/* qtool: test helper that reads a stopped daemon's queue through the store
 * API (read-only).
 *   qtool SPOOL count      "messages=N recipients=M"
 *   qtool SPOOL list       "ID size sender nrcpt", then "  state address"
 *                          for each recipient
 *   qtool SPOOL body ID    the stored body on stdout
 * Exit status: 0 ok, 1 no such message or a bad record, 2 usage or open. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log.h"
#include "queue.h"

struct counts {
    unsigned long messages, recipients;
};

static int count_cb(const struct queue_envelope *env, void *arg)
{
    struct counts *c = arg;
    c->messages++;
    c->recipients += env->nrcpt;
    return 0;
}

static const char *state_name(enum rcpt_state s)
{
    static const char *const names[] = { "deferred", "active", "held", "done" };
    return (unsigned)s < 4 ? names[s] : "?";
}

static int list_cb(const struct queue_envelope *env, void *arg)
{
    (void)arg;
    printf("%s %llu <%s> %zu\n", env->id, (unsigned long long)env->size,
           env->sender ? env->sender : "", env->nrcpt);
    for (size_t i = 0; i < env->nrcpt; i++)
        printf("  %s <%s>\n", state_name(env->rcpt[i].state),
               env->rcpt[i].addr);
    return 0;
}

static int cmd_count(struct queue *q)
{
    struct counts c = { 0, 0 };
    int rc = queue_walk(q, count_cb, &c);
    printf("messages=%lu recipients=%lu\n", c.messages, c.recipients);
    return rc == 0 ? 0 : 1;
}

static int cmd_list(struct queue *q)
{
    return queue_walk(q, list_cb, NULL) == 0 ? 0 : 1;
}

static int write_body(struct evbuffer *body)
{
    while (evbuffer_get_length(body) > 0)
        if (evbuffer_write(body, STDOUT_FILENO) < 0) {
            perror("qtool: stdout");
            return 1;
        }
    return 0;
}

static int cmd_body(struct queue *q, const char *id)
{
    struct queue_envelope env;
    struct evbuffer *body = evbuffer_new();
    if (!body)
        return 2;
    int rc = queue_get(q, id, &env, body);
    if (rc == 1)
        fprintf(stderr, "qtool: %s: no such message\n", id);
    if (rc == 0) {
        rc = write_body(body);
        queue_envelope_free(&env);
    }
    evbuffer_free(body);
    return rc == 0 ? 0 : 1;
}

static int usage(void)
{
    fprintf(stderr, "usage: qtool SPOOL count|list|body ID\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *cmd = argv[2];
    bool is_body = strcmp(cmd, "body") == 0;
    if ((is_body && argc != 4) || (!is_body && argc != 3))
        return usage();
    if (!is_body && strcmp(cmd, "count") != 0 && strcmp(cmd, "list") != 0)
        return usage();
    log_init("qtool", true, false);
    struct queue_opts opts = { .readonly = true };
    struct queue *q = queue_open(argv[1], &opts);
    if (!q)
        return 2;
    int rc = is_body ? cmd_body(q, argv[3])
             : strcmp(cmd, "count") == 0 ? cmd_count(q) : cmd_list(q);
    queue_close(q);
    return rc;
}
