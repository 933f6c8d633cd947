/* replicator_sync: a mailbox transaction commit is not finished until the
   local dovecot-replicator daemon says its peers hold the change.

   The hook is the mailbox's transaction_commit vfunc (the quota and
   lazy-expunge pattern), not notify's commit callback: the callback
   returns void and could only delay the reply, while the vfunc can turn
   it into a tagged NO.  The parent commit runs first, so the change is in
   the index and control files before the daemon is asked to ship them.
   The module file is named lib00_ so that this wrapper is the outermost
   one: quota, notify (mail_log, replication, push) and lazy-expunge all
   see the local commit succeed, which it did, and only the client is told
   that the change is not safe yet. */

#include "lib.h"
#include "array.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mail-index-transaction-private.h"
#include "replicator-sync-settings.h"
#include "replicator-sync-client.h"
#include "replicator-sync-plugin.h"

#define REPLICATOR_SYNC_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, replicator_sync_storage_module)
#define REPLICATOR_SYNC_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, replicator_sync_user_module)
#define REPLICATOR_SYNC_USER_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, replicator_sync_user_module)

struct replicator_sync_user {
	union mail_user_module_context module_ctx;
	struct replicator_sync_settings set;
};

const char *replicator_sync_plugin_version = DOVECOT_ABI_VERSION;

static MODULE_CONTEXT_DEFINE_INIT(replicator_sync_storage_module,
				  &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(replicator_sync_user_module,
				  &mail_user_module_register);

/* Storages whose indexes live in memory or are rebuilt from other
   mailboxes (virtual commits reach the backend mailboxes' hooks). */
static const char *const replicator_sync_ignored_storages[] = {
	"virtual", "raw", "fail", NULL
};

/* Decided before the parent commit frees the transaction.  lib-index files
   an IMAP EXPUNGE (an expunge request) under CHANGE_OTHERS, so the mask
   alone would miss it. */
static bool
replicator_sync_trans_has_changes(struct mailbox_transaction_context *t)
{
	return t->save_count > 0 ||
		(array_is_created(&t->itrans->expunges) &&
		 array_count(&t->itrans->expunges) > 0);
}

/* Changes a client can see.  A read-only transaction that only added
   cache records (CHANGE_OTHERS) costs no round trip. */
static bool
replicator_sync_changes_visible(const struct mail_transaction_commit_changes *changes)
{
	return (array_is_created(&changes->saved_uids) &&
		array_count(&changes->saved_uids) > 0) ||
		(changes->changes_mask &
		 ENUM_NEGATE(MAIL_INDEX_TRANSACTION_CHANGE_OTHERS)) != 0;
}

static int replicator_sync_add_dir(struct mailbox *box,
				   enum mailbox_list_path_type type,
				   ARRAY_TYPE(const_string) *dirs)
{
	const char *path, *dir;
	int ret;

	if ((ret = mailbox_get_path_to(box, type, &path)) <= 0)
		return ret;
	if (path[0] == '\0')
		return 0; /* in-memory index */
	array_foreach_elem(dirs, dir) {
		if (strcmp(dir, path) == 0)
			return 0;
	}
	array_push_back(dirs, &path);
	return 0;
}

/* The mailbox's INDEX and CONTROL directories, deduplicated and
   NULL-terminated; the daemon adds dependent ones (mdbox storage/). */
static int replicator_sync_mailbox_dirs(struct mailbox *box,
					const char *const **dirs_r)
{
	ARRAY_TYPE(const_string) dirs;

	t_array_init(&dirs, 3);
	if (replicator_sync_add_dir(box, MAILBOX_LIST_PATH_TYPE_INDEX, &dirs) < 0 ||
	    replicator_sync_add_dir(box, MAILBOX_LIST_PATH_TYPE_CONTROL, &dirs) < 0)
		return -1;
	array_append_zero(&dirs);
	*dirs_r = array_front(&dirs);
	return 0;
}

static void replicator_sync_log_flushed(struct mailbox *box,
					const struct replicator_sync_reply *reply)
{
	e_debug(event_create_passthrough(box->event)->
		set_name("replicator_sync_flushed")->
		add_int("wait_usecs", (intmax_t)reply->waited_usecs)->
		add_int("peers_acked", reply->peers_acked)->event(),
		"replicator_sync: Flushed user=%s mailbox=%s: "
		"waited %"PRIu64".%03u ms, %u peer(s) acked",
		box->storage->user->username, mailbox_get_vname(box),
		reply->waited_usecs / 1000,
		(unsigned int)(reply->waited_usecs % 1000),
		reply->peers_acked);
}

/* Apply the failure policy.  With "fail" the command gets a tagged NO; the
   change stays committed locally, so a client retry may duplicate a
   message, which is accepted: losing one is not. */
static int replicator_sync_failed(struct mailbox *box,
				  const struct replicator_sync_settings *set,
				  const struct replicator_sync_reply *reply)
{
	struct mail_user *user = box->storage->user;
	struct event_passthrough *e =
		event_create_passthrough(box->event)->
		add_str("reason", reply->reason)->
		add_int("wait_usecs", (intmax_t)reply->waited_usecs);

	if (set->policy == REPLICATOR_SYNC_POLICY_DEGRADE) {
		e_warning(e->set_name("replicator_sync_degraded")->event(),
			  "replicator_sync: Change not replicated, answering OK "
			  "(policy=degrade): user=%s mailbox=%s: %s",
			  user->username, mailbox_get_vname(box), reply->detail);
		return 0;
	}
	e_warning(e->set_name("replicator_sync_failed")->event(),
		  "replicator_sync: Change not replicated, failing the command "
		  "(policy=fail): user=%s mailbox=%s: %s",
		  user->username, mailbox_get_vname(box), reply->detail);
	/* MAIL_ERROR_TEMP makes LDA/LMTP tempfail; IMAP would call it
	   [SERVERBUG], while RFC 5530's [UNAVAILABLE] is what it is */
	mail_storage_set_error(box->storage, MAIL_ERROR_TEMP, t_strdup_printf(
		"%sChange not yet replicated to a peer (replicator: %s); retry",
		strcmp(user->service, "imap") == 0 ? "[UNAVAILABLE] " : "",
		reply->reason));
	return -1;
}

static int replicator_sync_mailbox_flush(struct mailbox *box)
{
	struct replicator_sync_user *ruser =
		REPLICATOR_SYNC_USER_CONTEXT_REQUIRE(box->storage->user);
	struct replicator_sync_request req;
	struct replicator_sync_reply reply;

	i_zero(&req);
	if (replicator_sync_mailbox_dirs(box, &req.dirs) < 0) {
		i_zero(&reply);
		reply.reason = "mailbox directories unknown";
		reply.detail = t_strconcat("mailbox_get_path_to() failed: ",
			mailbox_get_last_internal_error(box, NULL), NULL);
		return replicator_sync_failed(box, &ruser->set, &reply);
	}
	if (req.dirs[0] == NULL)
		return 0;
	req.socket_path = ruser->set.socket_path;
	req.timeout_msecs = ruser->set.timeout_msecs;
	req.policy = replicator_sync_policy_name(ruser->set.policy);
	req.username = box->storage->user->username;

	replicator_sync_flush(&req, &reply);
	if (reply.status != REPLICATOR_SYNC_STATUS_OK)
		return replicator_sync_failed(box, &ruser->set, &reply);
	replicator_sync_log_flushed(box, &reply);
	return 0;
}

static int
replicator_sync_transaction_commit(struct mailbox_transaction_context *t,
				   struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	union mailbox_module_context *rbox = REPLICATOR_SYNC_CONTEXT_REQUIRE(box);
	bool changed = replicator_sync_trans_has_changes(t);

	if (rbox->super.transaction_commit(t, changes_r) < 0)
		return -1;
	/* Committed locally.  If we return -1 now, the caller
	   (mailbox_transaction_commit_get_changes()) unrefs changes_r->pool
	   itself, so it is left alone here. */
	if (!changed && !replicator_sync_changes_visible(changes_r))
		return 0;
	return replicator_sync_mailbox_flush(box);
}

static bool replicator_sync_storage_ignored(const struct mail_storage *storage)
{
	unsigned int i;

	for (i = 0; replicator_sync_ignored_storages[i] != NULL; i++) {
		if (strcmp(storage->name, replicator_sync_ignored_storages[i]) == 0)
			return TRUE;
	}
	return FALSE;
}

static void replicator_sync_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	union mailbox_module_context *rbox;

	if (REPLICATOR_SYNC_USER_CONTEXT(box->storage->user) == NULL ||
	    replicator_sync_storage_ignored(box->storage))
		return;

	rbox = p_new(box->pool, union mailbox_module_context, 1);
	rbox->super = *v;
	box->vlast = &rbox->super;
	v->transaction_commit = replicator_sync_transaction_commit;
	MODULE_CONTEXT_SET_SELF(box, replicator_sync_storage_module, rbox);
}

static void replicator_sync_mail_user_created(struct mail_user *user)
{
	struct replicator_sync_user *ruser;
	struct replicator_sync_settings set;

	if (!replicator_sync_settings_read(user, user->pool, &set)) {
		e_debug(user->event, "replicator_sync: Disabled for this user "
			"(replicator_sync=no)");
		return;
	}
	ruser = p_new(user->pool, struct replicator_sync_user, 1);
	ruser->set = set;
	MODULE_CONTEXT_SET(user, replicator_sync_user_module, ruser);
}

static struct mail_storage_hooks replicator_sync_mail_storage_hooks = {
	.mail_user_created = replicator_sync_mail_user_created,
	.mailbox_allocated = replicator_sync_mailbox_allocated,
};

void replicator_sync_plugin_init(struct module *module)
{
	mail_storage_hooks_add(module, &replicator_sync_mail_storage_hooks);
}

void replicator_sync_plugin_deinit(void)
{
	mail_storage_hooks_remove(&replicator_sync_mail_storage_hooks);
	replicator_sync_client_deinit();
}
