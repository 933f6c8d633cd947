/* Control protocol 1.1 client: FLUSH and OWNER requests to the local
   daemon.

   One connection per process, opened lazily and kept between requests.
   After any error or timeout it is closed, so a reply that arrives late
   can never be read as the answer to a later request; request ids are
   never reused within the process either.  On a fresh connection the
   request is pipelined behind the VERSION line: one round trip either way.

   A 1.0 daemon does not know OWNER.  It answers a request it does not know
   with FAIL and goes on, so an OWNER pipelined behind VERSION on a fresh
   connection is answered, and that answer is read and dropped once the
   daemon's VERSION line said 1.0; on a kept connection to a 1.0 daemon it
   is not sent at all.  Either way the caller sees UNSUPPORTED, never a
   FAIL that would lock a user out. */

#include "lib.h"
#include "str.h"
#include "strescape.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "replicator-sync-conn.h"
#include "replicator-sync-client.h"

/* longest daemon reason passed on to an IMAP client */
#define REPLICATOR_SYNC_MAX_REASON 200

static struct replicator_sync_conn replicator_sync_conn = { .fd = -1 };
static uint64_t replicator_sync_last_id = 0;
/* the minor version the daemon's VERSION line said on the open connection */
static unsigned int replicator_sync_daemon_minor = 0;

/* One request: exactly one of flush and owner_username is set. */
struct replicator_sync_call {
	const char *socket_path;
	unsigned int timeout_msecs;
	/* absolute, on the monotonic clock: connect, send and reply in one
	   budget */
	uint64_t deadline;
	const struct replicator_sync_request *flush;
	const char *owner_username;
};

static void replicator_sync_set_error(struct replicator_sync_reply *reply,
				      const char *reason, const char *detail)
{
	reply->status = REPLICATOR_SYNC_STATUS_ERROR;
	reply->reason = reason;
	reply->detail = detail;
}

/* An I/O failure is a timeout when the budget is spent, otherwise the
   connection itself broke. */
static void replicator_sync_set_io_error(struct replicator_sync_reply *reply,
					 const struct replicator_sync_call *call,
					 const char *detail)
{
	const char *reason = replicator_sync_now_usecs() >= call->deadline ?
		t_strdup_printf("no answer within %u ms", call->timeout_msecs) :
		"connection to the daemon failed";

	replicator_sync_set_error(reply, reason, detail);
}

static void replicator_sync_set_protocol_error(struct replicator_sync_reply *reply,
					       const char *detail)
{
	replicator_sync_set_error(reply, "protocol error",
				  t_strconcat("protocol error: ", detail, NULL));
}

/* Reuse the kept connection if it is to the same socket and clean,
   otherwise open a new one.  *fresh_r tells whether the handshake is
   still due. */
static int replicator_sync_prepare(const char *path, bool *fresh_r,
				   const char **error_r)
{
	struct replicator_sync_conn *conn = &replicator_sync_conn;

	if (conn->fd != -1 && (strcmp(conn->path, path) != 0 ||
			       !replicator_sync_conn_is_idle(conn)))
		replicator_sync_conn_close(conn);
	*fresh_r = conn->fd == -1;
	if (!*fresh_r)
		return 0;
	return replicator_sync_conn_open(conn, path, error_r);
}

static void replicator_sync_append_flush(string_t *str, uint64_t id,
					 const struct replicator_sync_request *req,
					 uint64_t deadline)
{
	uint64_t now = replicator_sync_now_usecs();
	uint64_t left_msecs = now >= deadline ? 0 : (deadline - now) / 1000;
	unsigned int i;

	str_printfa(str, "FLUSH\t%"PRIu64"\t%"PRIu64"\t%s\t",
		    id, left_msecs, req->policy);
	str_append_tabescaped(str, req->username);
	for (i = 0; req->dirs[i] != NULL; i++) {
		str_append_c(str, '\t');
		str_append_tabescaped(str, req->dirs[i]);
	}
}

static const char *
replicator_sync_format(const struct replicator_sync_call *call, bool fresh,
		       uint64_t id)
{
	string_t *str = t_str_new(256);

	if (fresh) {
		str_printfa(str, "VERSION\t%s\t%u\t%u\n",
			    REPLICATOR_SYNC_PROTOCOL_NAME,
			    REPLICATOR_SYNC_PROTOCOL_MAJOR,
			    REPLICATOR_SYNC_PROTOCOL_MINOR);
	}
	if (call->flush != NULL)
		replicator_sync_append_flush(str, id, call->flush, call->deadline);
	else {
		str_printfa(str, "OWNER\t%"PRIu64"\t", id);
		str_append_tabescaped(str, call->owner_username);
	}
	str_append_c(str, '\n');
	return str_c(str);
}

/* OWNER is 1.1: on a kept connection the daemon's version is known. */
static bool replicator_sync_unsupported(const struct replicator_sync_call *call)
{
	return call->owner_username != NULL && replicator_sync_daemon_minor < 1;
}

static void replicator_sync_set_unsupported(struct replicator_sync_reply *reply)
{
	reply->status = REPLICATOR_SYNC_STATUS_UNSUPPORTED;
	reply->reason = "daemon speaks control protocol 1.0";
	reply->detail = "the daemon speaks control protocol 1.0, which has "
		"no OWNER request (update the daemon)";
}

/* Send the request, pipelined behind the VERSION line on a fresh
   connection.  A kept connection may have been closed by a restarted
   daemon, so a failed send on it is retried once on a new one. */
static int replicator_sync_send(const struct replicator_sync_call *call,
				uint64_t *id_r, bool *fresh_r,
				struct replicator_sync_reply *reply)
{
	struct replicator_sync_conn *conn = &replicator_sync_conn;
	const char *line, *error;
	unsigned int attempt;

	for (attempt = 0;; attempt++) {
		if (replicator_sync_prepare(call->socket_path, fresh_r, &error) < 0) {
			replicator_sync_set_error(reply, "daemon unreachable", error);
			return -1;
		}
		if (!*fresh_r && replicator_sync_unsupported(call)) {
			replicator_sync_set_unsupported(reply);
			return -1;
		}
		*id_r = ++replicator_sync_last_id;
		line = replicator_sync_format(call, *fresh_r, *id_r);
		if (replicator_sync_conn_write(conn, line, strlen(line),
					       call->deadline, &error) == 0)
			return 0;
		replicator_sync_conn_close(conn);
		if (*fresh_r || attempt > 0) {
			replicator_sync_set_io_error(reply, call, error);
			return -1;
		}
	}
}

static int replicator_sync_check_version(const char *line,
					 struct replicator_sync_reply *reply)
{
	const char *const *args = t_strsplit_tabescaped(line);
	unsigned int major, minor;

	if (str_array_length(args) < 3 || strcmp(args[0], "VERSION") != 0 ||
	    strcmp(args[1], REPLICATOR_SYNC_PROTOCOL_NAME) != 0 ||
	    str_to_uint(args[2], &major) < 0) {
		replicator_sync_set_protocol_error(reply, t_strdup_printf(
			"expected VERSION line, got '%s'", str_sanitize(line, 128)));
		return -1;
	}
	if (major != REPLICATOR_SYNC_PROTOCOL_MAJOR) {
		replicator_sync_set_protocol_error(reply, t_strdup_printf(
			"incompatible daemon protocol version %u (ours is %u)",
			major, REPLICATOR_SYNC_PROTOCOL_MAJOR));
		return -1;
	}
	/* a VERSION line without a usable minor is read as 1.0 */
	if (args[3] == NULL || str_to_uint(args[3], &minor) < 0)
		minor = 0;
	replicator_sync_daemon_minor = minor;
	return 0;
}

/* OK <id> <peers_acked> | FAIL <id> <reason> | REFUSED <id> <reason>;
   anything else is a protocol error.  Extra trailing fields are tolerated
   for minor versions. */
static void replicator_sync_parse_reply(const char *line, uint64_t id,
					struct replicator_sync_reply *reply)
{
	const char *const *args = t_strsplit_tabescaped(line);
	bool valid = str_array_length(args) >= 3;
	bool ok = valid && strcmp(args[0], "OK") == 0;
	bool refused = valid && strcmp(args[0], "REFUSED") == 0;
	uint64_t reply_id;

	if (!valid || (!ok && !refused && strcmp(args[0], "FAIL") != 0) ||
	    str_to_uint64(args[1], &reply_id) < 0 ||
	    (ok && str_to_uint(args[2], &reply->peers_acked) < 0)) {
		replicator_sync_set_protocol_error(reply, t_strdup_printf(
			"unexpected reply '%s'", str_sanitize(line, 128)));
	} else if (reply_id != id) {
		replicator_sync_set_protocol_error(reply, t_strdup_printf(
			"reply for request %"PRIu64" while waiting for %"PRIu64,
			reply_id, id));
	} else if (ok) {
		reply->status = REPLICATOR_SYNC_STATUS_OK;
	} else {
		reply->status = refused ? REPLICATOR_SYNC_STATUS_REFUSED :
			REPLICATOR_SYNC_STATUS_FAILED;
		reply->reason = args[2][0] == '\0' ? "no reason given" :
			str_sanitize(args[2], REPLICATOR_SYNC_MAX_REASON);
		reply->detail = t_strconcat("daemon answered ", args[0], ": ",
					    reply->reason, NULL);
	}
}

static void replicator_sync_exchange(const struct replicator_sync_call *call,
				     struct replicator_sync_reply *reply)
{
	struct replicator_sync_conn *conn = &replicator_sync_conn;
	const char *line, *error;
	uint64_t id;
	bool fresh;

	if (replicator_sync_send(call, &id, &fresh, reply) < 0)
		return;
	if (fresh) {
		if (replicator_sync_conn_read_line(conn, call->deadline,
						   &line, &error) < 0) {
			replicator_sync_set_io_error(reply, call, error);
			return;
		}
		if (replicator_sync_check_version(line, reply) < 0)
			return;
	}
	if (replicator_sync_conn_read_line(conn, call->deadline, &line, &error) < 0) {
		replicator_sync_set_io_error(reply, call, error);
		return;
	}
	if (replicator_sync_unsupported(call)) {
		/* a 1.0 daemon's FAIL for a request it does not know: read,
		   so the connection stays in step, and dropped */
		replicator_sync_set_unsupported(reply);
		return;
	}
	replicator_sync_parse_reply(line, id, reply);
}

static void replicator_sync_run(struct replicator_sync_call *call,
				struct replicator_sync_reply *reply_r)
{
	uint64_t start = replicator_sync_now_usecs();

	i_zero(reply_r);
	call->deadline = start + call->timeout_msecs * 1000ULL;
	replicator_sync_exchange(call, reply_r);
	/* after an error the stream is out of step; bytes beyond the reply
	   were never asked for: either way the connection is not reused */
	if (reply_r->status == REPLICATOR_SYNC_STATUS_ERROR ||
	    replicator_sync_conn.in_used > 0)
		replicator_sync_conn_close(&replicator_sync_conn);
	reply_r->waited_usecs = replicator_sync_now_usecs() - start;
}

void replicator_sync_flush(const struct replicator_sync_request *req,
			   struct replicator_sync_reply *reply_r)
{
	struct replicator_sync_call call;

	i_assert(req->dirs[0] != NULL);

	i_zero(&call);
	call.socket_path = req->socket_path;
	call.timeout_msecs = req->timeout_msecs;
	call.flush = req;
	replicator_sync_run(&call, reply_r);
}

void replicator_sync_owner(const char *socket_path, unsigned int timeout_msecs,
			   const char *username,
			   struct replicator_sync_reply *reply_r)
{
	struct replicator_sync_call call;

	i_zero(&call);
	call.socket_path = socket_path;
	call.timeout_msecs = timeout_msecs;
	call.owner_username = username;
	replicator_sync_run(&call, reply_r);
}

void replicator_sync_client_deinit(void)
{
	replicator_sync_conn_close(&replicator_sync_conn);
}
