/* plugin {} settings of the replicator sync-commit plugin.

   A wrong value must not silently weaken the guarantee, so every invalid
   value falls back to the safe choice (sync on, policy fail, default
   timeout, owner check on) and is logged as an error.  Once per process
   is enough: lmtp and doveadm create many users with the same global
   settings. */

#include "lib.h"
#include "strnum.h"
#include "mail-user.h"
#include "replicator-sync-settings.h"

enum replicator_sync_setting {
	REPLICATOR_SYNC_SETTING_ENABLED,
	REPLICATOR_SYNC_SETTING_SOCKET,
	REPLICATOR_SYNC_SETTING_TIMEOUT,
	REPLICATOR_SYNC_SETTING_POLICY,
	REPLICATOR_SYNC_SETTING_OWNER_CHECK,

	REPLICATOR_SYNC_SETTING_COUNT
};

static const char *const replicator_sync_setting_names[] = {
	"replicator_sync",
	"replicator_sync_socket",
	"replicator_sync_timeout",
	"replicator_sync_policy",
	"replicator_sync_owner_check",
};

static bool replicator_sync_setting_logged[REPLICATOR_SYNC_SETTING_COUNT];

static void
replicator_sync_setting_invalid(struct mail_user *user,
				enum replicator_sync_setting setting,
				const char *value, const char *fallback)
{
	if (replicator_sync_setting_logged[setting])
		return;
	replicator_sync_setting_logged[setting] = TRUE;
	e_error(user->event, "replicator_sync: Invalid %s=%s, using %s",
		replicator_sync_setting_names[setting], value, fallback);
}

static const char *
replicator_sync_getenv(struct mail_user *user,
		       enum replicator_sync_setting setting)
{
	return mail_user_plugin_getenv(user,
				       replicator_sync_setting_names[setting]);
}

/* yes|no, default (and fallback) yes */
static bool replicator_sync_yes(struct mail_user *user,
				enum replicator_sync_setting setting)
{
	const char *value = replicator_sync_getenv(user, setting);

	if (value == NULL || strcasecmp(value, "yes") == 0)
		return TRUE;
	if (strcasecmp(value, "no") == 0)
		return FALSE;
	replicator_sync_setting_invalid(user, setting, value, "yes");
	return TRUE;
}

static unsigned int replicator_sync_timeout(struct mail_user *user)
{
	const char *value =
		replicator_sync_getenv(user, REPLICATOR_SYNC_SETTING_TIMEOUT);
	unsigned int msecs;

	if (value == NULL)
		return REPLICATOR_SYNC_DEFAULT_TIMEOUT_MSECS;
	if (str_to_uint(value, &msecs) < 0 || msecs == 0 ||
	    msecs > REPLICATOR_SYNC_MAX_TIMEOUT_MSECS) {
		replicator_sync_setting_invalid(user,
			REPLICATOR_SYNC_SETTING_TIMEOUT, value,
			t_strdup_printf("%u ms (1..%u allowed)",
					REPLICATOR_SYNC_DEFAULT_TIMEOUT_MSECS,
					REPLICATOR_SYNC_MAX_TIMEOUT_MSECS));
		return REPLICATOR_SYNC_DEFAULT_TIMEOUT_MSECS;
	}
	return msecs;
}

static enum replicator_sync_policy
replicator_sync_policy(struct mail_user *user)
{
	const char *value =
		replicator_sync_getenv(user, REPLICATOR_SYNC_SETTING_POLICY);

	if (value == NULL || strcmp(value, "fail") == 0)
		return REPLICATOR_SYNC_POLICY_FAIL;
	if (strcmp(value, "degrade") == 0)
		return REPLICATOR_SYNC_POLICY_DEGRADE;
	replicator_sync_setting_invalid(user, REPLICATOR_SYNC_SETTING_POLICY,
					value, "fail");
	return REPLICATOR_SYNC_POLICY_FAIL;
}

static const char *
replicator_sync_socket(struct mail_user *user, pool_t pool)
{
	const char *value =
		replicator_sync_getenv(user, REPLICATOR_SYNC_SETTING_SOCKET);

	if (value == NULL)
		return REPLICATOR_SYNC_DEFAULT_SOCKET;
	if (value[0] != '/') {
		replicator_sync_setting_invalid(user,
			REPLICATOR_SYNC_SETTING_SOCKET, value,
			REPLICATOR_SYNC_DEFAULT_SOCKET" (an absolute path is required)");
		return REPLICATOR_SYNC_DEFAULT_SOCKET;
	}
	return p_strdup(pool, value);
}

bool replicator_sync_settings_read(struct mail_user *user, pool_t pool,
				   struct replicator_sync_settings *set_r)
{
	if (!replicator_sync_yes(user, REPLICATOR_SYNC_SETTING_ENABLED))
		return FALSE;
	set_r->socket_path = replicator_sync_socket(user, pool);
	set_r->timeout_msecs = replicator_sync_timeout(user);
	set_r->policy = replicator_sync_policy(user);
	set_r->owner_check =
		replicator_sync_yes(user, REPLICATOR_SYNC_SETTING_OWNER_CHECK);
	return TRUE;
}

const char *replicator_sync_policy_name(enum replicator_sync_policy policy)
{
	switch (policy) {
	case REPLICATOR_SYNC_POLICY_FAIL:
		return "fail";
	case REPLICATOR_SYNC_POLICY_DEGRADE:
		return "degrade";
	}
	i_unreached();
}
