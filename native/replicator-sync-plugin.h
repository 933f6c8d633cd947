#ifndef REPLICATOR_SYNC_PLUGIN_H
#define REPLICATOR_SYNC_PLUGIN_H

struct module;

extern const char *replicator_sync_plugin_version;

void replicator_sync_plugin_init(struct module *module);
void replicator_sync_plugin_deinit(void);

#endif
