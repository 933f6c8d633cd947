/* Reading the replicator sync-commit plugin's settings.

   The one place where Dovecot 2.3 and 2.4 differ for this plugin:

   - 2.3 hands plugins their plugin {} block as free-form strings
     (mail_user_plugin_getenv()) and checks nothing.  A wrong value must
     not silently weaken the guarantee, so every invalid value falls back
     to the safe choice (sync on, policy fail, default timeout, owner check
     on) and is logged as an error.  Once per process is enough: lmtp and
     doveadm create many users with the same global settings.

   - 2.4 has no plugin {} block: the settings are top-level, declared in
     replicator-sync-settings-defs.c, and Dovecot itself parses and checks
     them, refusing an invalid value with an error that names it.  Here
     they are only fetched (settings_get()) and copied. */

#include "lib.h"
#include "mail-user.h"
#if DOVECOT_PREREQ(2, 4, 0)
#  include "settings.h"
#else
#  include "strnum.h"
#endif
#include "replicator-sync-settings.h"

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

bool replicator_sync_policy_parse(const char *name,
				  enum replicator_sync_policy *policy_r)
{
	if (strcmp(name, "fail") == 0)
		*policy_r = REPLICATOR_SYNC_POLICY_FAIL;
	else if (strcmp(name, "degrade") == 0)
		*policy_r = REPLICATOR_SYNC_POLICY_DEGRADE;
	else
		return FALSE;
	return TRUE;
}

#if DOVECOT_PREREQ(2, 4, 0)

int replicator_sync_settings_read(struct mail_user *user, pool_t pool,
				  struct replicator_sync_settings *set_r,
				  const char **error_r)
{
	const struct replicator_sync_set *set;
	bool policy_known;

	/* the user's event carries the userdb's and doveadm -o's overrides */
	if (settings_get(user->event, &replicator_sync_setting_parser_info, 0,
			 &set, error_r) < 0)
		return -1;
	if (!set->replicator_sync) {
		settings_free(set);
		return 0;
	}
	/* copied, so that the settings need no reference for the user's
	   lifetime */
	set_r->socket_path = p_strdup(pool, set->replicator_sync_socket);
	set_r->timeout_msecs = set->replicator_sync_timeout;
	set_r->owner_check = set->replicator_sync_owner_check;
	/* the ENUM definition already allowed only these two */
	policy_known = replicator_sync_policy_parse(set->replicator_sync_policy,
						    &set_r->policy);
	settings_free(set);
	i_assert(policy_known);
	return 1;
}

#else /* Dovecot 2.3: plugin {} strings, checked here */

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
	enum replicator_sync_policy policy;

	if (value == NULL)
		return REPLICATOR_SYNC_POLICY_FAIL;
	if (replicator_sync_policy_parse(value, &policy))
		return policy;
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

int replicator_sync_settings_read(struct mail_user *user, pool_t pool,
				  struct replicator_sync_settings *set_r,
				  const char **error_r ATTR_UNUSED)
{
	if (!replicator_sync_yes(user, REPLICATOR_SYNC_SETTING_ENABLED))
		return 0;
	set_r->socket_path = replicator_sync_socket(user, pool);
	set_r->timeout_msecs = replicator_sync_timeout(user);
	set_r->policy = replicator_sync_policy(user);
	set_r->owner_check =
		replicator_sync_yes(user, REPLICATOR_SYNC_SETTING_OWNER_CHECK);
	return 1;
}

#endif /* Dovecot 2.3 */
