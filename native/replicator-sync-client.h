#ifndef REPLICATOR_SYNC_CLIENT_H
#define REPLICATOR_SYNC_CLIENT_H

/* Client side of the dovecot-replicator control protocol v1: one FLUSH
   request at a time over one process-wide connection. */

#define REPLICATOR_SYNC_PROTOCOL_NAME "replicator-control"
#define REPLICATOR_SYNC_PROTOCOL_MAJOR 1
#define REPLICATOR_SYNC_PROTOCOL_MINOR 0

enum replicator_sync_status {
	/* the daemon answered OK: enough peers hold the change */
	REPLICATOR_SYNC_STATUS_OK,
	/* the daemon answered FAIL */
	REPLICATOR_SYNC_STATUS_FAILED,
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
	/* short reason fit for an IMAP client: the daemon's FAIL text or a
	   category such as "daemon unreachable" (NULL when OK) */
	const char *reason;
	/* the reason with details for the server log (NULL when OK) */
	const char *detail;
	unsigned int peers_acked;
	/* time spent in replicator_sync_flush() */
	uint64_t waited_usecs;
};

/* Ask the daemon to flush the directories and wait for its answer until
   the request's timeout.  Strings in the reply are data stack allocated. */
void replicator_sync_flush(const struct replicator_sync_request *req,
			   struct replicator_sync_reply *reply_r);
/* Close the process-wide connection. */
void replicator_sync_client_deinit(void);

#endif
