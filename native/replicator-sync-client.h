#ifndef REPLICATOR_SYNC_CLIENT_H
#define REPLICATOR_SYNC_CLIENT_H

/* Client side of the dovecot-replicator control protocol 1.1: one request
   (FLUSH after a commit, OWNER when a user is created) at a time over one
   process-wide connection. */

#define REPLICATOR_SYNC_PROTOCOL_NAME "replicator-control"
#define REPLICATOR_SYNC_PROTOCOL_MAJOR 1
#define REPLICATOR_SYNC_PROTOCOL_MINOR 1

enum replicator_sync_status {
	/* the daemon answered OK: enough peers hold the change */
	REPLICATOR_SYNC_STATUS_OK,
	/* the daemon answered FAIL (OWNER: another node owns the user) */
	REPLICATOR_SYNC_STATUS_FAILED,
	/* the daemon answered REFUSED (protocol 1.1): this node may not
	   acknowledge the user's commits (another node owns the user, or this
	   node's ownership lease is not certainly valid); no failure policy
	   may turn it into OK */
	REPLICATOR_SYNC_STATUS_REFUSED,
	/* the daemon speaks protocol 1.0, which has no such request (OWNER) */
	REPLICATOR_SYNC_STATUS_UNSUPPORTED,
	/* no usable answer: unreachable, timeout, protocol error */
	REPLICATOR_SYNC_STATUS_ERROR,
};

struct replicator_sync_request {
	const char *socket_path;
	unsigned int timeout_msecs;
	/* "fail" or "degrade", passed on for the daemon's counters */
	const char *policy;
	const char *username;
	/* NULL-terminated, at least one directory */
	const char *const *dirs;
};

struct replicator_sync_reply {
	enum replicator_sync_status status;
	/* short reason fit for an IMAP client: the daemon's FAIL or REFUSED
	   text or a category such as "daemon unreachable" (NULL when OK) */
	const char *reason;
	/* the reason with details for the server log (NULL when OK) */
	const char *detail;
	unsigned int peers_acked;
	/* time spent in replicator_sync_flush() or _owner() */
	uint64_t waited_usecs;
};

/* Ask the daemon to flush the directories and wait for its answer until
   the request's timeout.  Strings in the reply are data stack allocated. */
void replicator_sync_flush(const struct replicator_sync_request *req,
			   struct replicator_sync_reply *reply_r);
/* Ask the daemon whether this node may serve the user (OWNER): OK when it
   may, FAILED (reason: the daemon's, naming the owner) when another node
   owns the user, UNSUPPORTED for a 1.0 daemon, ERROR without a usable
   answer.  Same connection, ids and deadline handling as FLUSH. */
void replicator_sync_owner(const char *socket_path, unsigned int timeout_msecs,
			   const char *username,
			   struct replicator_sync_reply *reply_r);
/* Close the process-wide connection. */
void replicator_sync_client_deinit(void);

#endif
