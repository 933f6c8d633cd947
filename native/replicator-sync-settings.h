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

/* What the plugin works with, whichever Dovecot read the configuration:
   plain values copied into the user's pool, so that the hooks never care
   how they were read. */
struct replicator_sync_settings {
	const char *socket_path;
	unsigned int timeout_msecs;
	enum replicator_sync_policy policy;
	/* ask the daemon (OWNER) whether this node may serve the user before
	   anything of it is opened (replicator_sync_owner_check, default yes) */
	bool owner_check;
};

/* Read the user's settings into set_r (strings allocated from pool).
   Returns 1 when the plugin is enabled for the user, 0 when the user has
   replicator_sync = no, -1 with error_r set when the settings cannot be
   used (Dovecot 2.4 only: it refuses an invalid value, e.g. one a userdb
   override brought in, and the caller fails the user with error_r).

   Dovecot 2.3 checks nothing: an invalid value is logged (once per
   process and setting) and replaced by the safe default, so 2.3 never
   returns -1. */
int replicator_sync_settings_read(struct mail_user *user, pool_t pool,
				  struct replicator_sync_settings *set_r,
				  const char **error_r);

const char *replicator_sync_policy_name(enum replicator_sync_policy policy);
/* "fail" or "degrade" -> the policy; FALSE for anything else */
bool replicator_sync_policy_parse(const char *name,
				  enum replicator_sync_policy *policy_r);

#if DOVECOT_PREREQ(2, 4, 0)
/* The settings as Dovecot 2.4 declares them (replicator-sync-settings-defs.c):
   the mail plugin reads them with settings_get(), and the settings module
   (replicator-sync-settings-module.c) shows the same definitions to
   doveconf, which refuses any setting nobody declared. */
struct replicator_sync_set {
	pool_t pool;

	bool replicator_sync;
	const char *replicator_sync_socket;
	unsigned int replicator_sync_timeout;
	const char *replicator_sync_policy;
	bool replicator_sync_owner_check;
};

extern const struct setting_parser_info replicator_sync_setting_parser_info;
#endif

#endif
