/* Dovecot 2.4 settings module: libreplicator_sync_settings.so.

   doveconf (and the config process, which parses dovecot.conf for every
   other process) knows only the settings compiled into it plus those of
   the modules in MODULEDIR/settings/.  It loads each of them and looks up
   "<module name>_set_infos", a NULL-terminated array of settings
   definitions, and checks "<module name>_version" against its ABI version.
   The module name is the file name without "lib" and ".so":
   replicator_sync_settings.

   The module holds nothing but the definitions the mail plugin reads with
   (replicator-sync-settings-defs.c, linked into both).  It has to live in
   the system's settings directory even when the mail plugin is loaded from
   elsewhere (mail_plugin_dir), because that is the only place doveconf
   looks; the Makefile puts it there. */

#include "lib.h"
#include "settings-parser.h"
#include "replicator-sync-settings.h"

/* exported for doveconf's module loader only */
extern const char *replicator_sync_settings_version;
extern const struct setting_parser_info *replicator_sync_settings_set_infos[];

const char *replicator_sync_settings_version = DOVECOT_ABI_VERSION;

const struct setting_parser_info *replicator_sync_settings_set_infos[] = {
	&replicator_sync_setting_parser_info,
	NULL
};
