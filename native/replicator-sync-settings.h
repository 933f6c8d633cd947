#ifndef REPLICATOR_SYNC_SETTINGS_H
#define REPLICATOR_SYNC_SETTINGS_H

struct mail_user;

/* the daemon's default control_socket: a stock install needs no setting */
#define REPLICATOR_SYNC_DEFAULT_SOCKET "/run/dovecot-replicator/control.sock"
#define REPLICATOR_SYNC_DEFAULT_TIMEOUT_MSECS 2000
#define REPLICATOR_SYNC_MAX_TIMEOUT_MSECS (10 * 60 * 1000)

enum replicator_sync_policy {
	/* tell the client NO: a UID is never handed out unreplicated */
	REPLICATOR_SYNC_POLICY_FAIL,
	/* answer OK and log a warning */
	REPLICATOR_SYNC_POLICY_DEGRADE,
};

struct replicator_sync_settings {
	const char *socket_path;
	unsigned int timeout_msecs;
	enum replicator_sync_policy policy;
	/* ask the daemon (OWNER) whether this node may serve the user before
	   anything of it is opened (replicator_sync_owner_check, default yes) */
	bool owner_check;
};

/* Read the user's plugin {} settings.  Invalid values are logged (once per
   process and setting) and replaced by the safe default.  Returns FALSE
   when the user has replicator_sync = no. */
bool replicator_sync_settings_read(struct mail_user *user, pool_t pool,
				   struct replicator_sync_settings *set_r);

const char *replicator_sync_policy_name(enum replicator_sync_policy policy);

#endif
