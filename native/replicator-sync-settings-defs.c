/* Dovecot 2.4: the replicator_sync settings as declared settings.

   2.4 has no plugin {} block and no free-form plugin environment: every
   setting is top-level and must be declared by someone, or doveconf
   refuses the whole configuration.  This file is that declaration.  It is
   linked into both modules built from this directory, so that the two can
   never disagree (Dovecot's settings_get() checks the keys of a settings
   block against the reader's own definitions):

   - the mail plugin reads its settings with settings_get() on these
     definitions (replicator-sync-settings.c);
   - the settings module (replicator-sync-settings-module.c) hands them to
     doveconf, which loads MODULEDIR/settings/ and nothing else.

   So this file may use only what the config process has: libdovecot
   (lib, lib-settings), never lib-storage.

   Invalid values are Dovecot's to refuse here, as it does for its own
   settings: doveconf names the setting and the service does not start,
   and a bad value that arrives later (a userdb override, doveadm -o) fails
   that user's initialization.  Nothing falls back silently, which is what
   2.3's fallbacks were a substitute for. */

#include "lib.h"

#if !DOVECOT_PREREQ(2, 4, 0)
#  error "replicator-sync-settings-defs.c is for Dovecot 2.4 and later (the Makefile builds it only there)"
#endif

#include "settings-parser.h"
#include "replicator-sync-settings.h"

#undef DEF
#define DEF(type, name) \
	SETTING_DEFINE_STRUCT_##type(#name, name, struct replicator_sync_set)

/* replicator_sync_timeout is a plain number of milliseconds (UINT), not a
   TIME_MSECS: 2.4 refuses a TIME_MSECS without a unit, so "2000" (2.3's
   syntax, what existing configurations and userdbs carry) would have to
   become "2000ms".  With UINT the same line means the same on both. */
static const struct setting_define replicator_sync_setting_defines[] = {
	DEF(BOOL, replicator_sync),
	DEF(STR, replicator_sync_socket),
	DEF(UINT, replicator_sync_timeout),
	DEF(ENUM, replicator_sync_policy),
	DEF(BOOL, replicator_sync_owner_check),

	SETTING_DEFINE_LIST_END
};

static const struct replicator_sync_set replicator_sync_default_settings = {
	.replicator_sync = TRUE,
	.replicator_sync_socket = REPLICATOR_SYNC_DEFAULT_SOCKET,
	.replicator_sync_timeout = REPLICATOR_SYNC_DEFAULT_TIMEOUT_MSECS,
	/* an ENUM's default lists the allowed values, the first one wins */
	.replicator_sync_policy = "fail:degrade",
	.replicator_sync_owner_check = TRUE,
};

/* What the types alone cannot say.  Called by doveconf on the values as
   written and again by settings_get() after %variable expansion.  Dovecot
   passes the error on as it is ("Error in configuration file ...: <error>")
   or behind "replicator_sync settings: Invalid settings: ", so the error
   names the setting itself. */
static bool
replicator_sync_settings_check(void *_set, pool_t pool ATTR_UNUSED,
			       const char **error_r)
{
	struct replicator_sync_set *set = _set;

	if (set->replicator_sync_timeout == 0 ||
	    set->replicator_sync_timeout > REPLICATOR_SYNC_MAX_TIMEOUT_MSECS) {
		*error_r = t_strdup_printf(
			"replicator_sync_timeout: %u is out of range: "
			"milliseconds, 1..%u allowed",
			set->replicator_sync_timeout,
			REPLICATOR_SYNC_MAX_TIMEOUT_MSECS);
		return FALSE;
	}
	/* with %variables doveconf cannot know the path yet
	   (set_value_unknown); settings_get() checks it once expanded */
	if (set->replicator_sync_socket != set_value_unknown &&
	    set->replicator_sync_socket[0] != '/') {
		*error_r = t_strdup_printf(
			"replicator_sync_socket: '%s' is not an absolute path",
			set->replicator_sync_socket);
		return FALSE;
	}
	return TRUE;
}

const struct setting_parser_info replicator_sync_setting_parser_info = {
	.name = "replicator_sync",
	/* No plugin_dependency: doveconf would then hide these settings
	   unless MODULEDIR/lib00_replicator_sync_plugin.so exists, while the
	   tests and the demo load the plugin from the build directory
	   (mail_plugin_dir).  The settings module alone decides. */

	.defines = replicator_sync_setting_defines,
	.defaults = &replicator_sync_default_settings,

	.struct_size = sizeof(struct replicator_sync_set),
	.pool_offset1 = 1 + offsetof(struct replicator_sync_set, pool),
	.check_func = replicator_sync_settings_check,
};
