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
   that the change is not safe yet.

   maildir adds a second hook, sync_deinit: a committed flag or keyword
   change reaches the body file names only in the sync that ends the
   command, and when a keyword gets its first letter that sync also writes
   dovecot-keywords, after the commit's flush.  The sync wrapper flushes
   again when, and only when, that file changed (replicator-sync-keywords.c
   says why a stat() and not the commit's change mask decides).

   With ownership on etcd, a third hook refuses a user another node owns
   when the user is created, before anything of it is opened (see
   replicator_sync_check_owner()). */

#include "lib.h"
#include "array.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mail-index-transaction-private.h"
#include "replicator-sync-settings.h"
#include "replicator-sync-client.h"
#include "replicator-sync-keywords.h"
#include "replicator-sync-mailbox.h"
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

struct replicator_sync_mailbox {
	union mailbox_module_context module_ctx;

	/* maildir only: a committed transaction changed flags or keywords
	   and no full sync has run since, so a sync may still apply it to
	   the body file names and write a new dovecot-keywords */
	bool keywords_pending;
	/* dovecot-keywords as it was when the last flush covering it was
	   sent (taken before sending: a write during the round trip shows
	   up as a difference at the next sync) */
	struct replicator_sync_keywords_id keywords_flushed;
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

static const struct replicator_sync_settings *
replicator_sync_box_settings(struct mailbox *box)
{
	struct replicator_sync_user *ruser =
		REPLICATOR_SYNC_USER_CONTEXT_REQUIRE(box->storage->user);

	return &ruser->set;
}

static bool replicator_sync_is_maildir(struct mailbox *box)
{
	return strcmp(box->storage->name, "maildir") == 0;
}

/* maildir applies committed flag and keyword changes to the body file
   names only in a later sync, which also writes dovecot-keywords when a
   keyword gets its first letter.  Remember where dovecot-keywords stood
   now, before this commit's own flush is sent: anything written up to
   here (an APPEND's keyword letters) travels with that flush. */
static void
replicator_sync_arm_keywords(struct mailbox *box,
			     struct replicator_sync_mailbox *rbox,
			     const struct mail_transaction_commit_changes *changes)
{
	if (rbox->keywords_pending || !replicator_sync_is_maildir(box) ||
	    (changes->changes_mask & (MAIL_INDEX_TRANSACTION_CHANGE_FLAGS |
				      MAIL_INDEX_TRANSACTION_CHANGE_KEYWORDS)) == 0)
		return;
	rbox->keywords_pending = TRUE;
	replicator_sync_keywords_id(box, &rbox->keywords_flushed);
}

static int
replicator_sync_transaction_commit(struct mailbox_transaction_context *t,
				   struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	struct replicator_sync_mailbox *rbox =
		REPLICATOR_SYNC_CONTEXT_REQUIRE(box);
	bool changed = replicator_sync_trans_has_changes(t);

	if (rbox->module_ctx.super.transaction_commit(t, changes_r) < 0)
		return -1;
	/* Committed locally.  If we return -1 now, the caller
	   (mailbox_transaction_commit_get_changes()) unrefs changes_r->pool
	   itself, so it is left alone here. */
	replicator_sync_arm_keywords(box, rbox, changes_r);
	if (!changed && !replicator_sync_changes_visible(changes_r))
		return 0;
	return replicator_sync_mailbox_flush(box, replicator_sync_box_settings(box),
					     REPLICATOR_SYNC_FLUSH_COMMIT);
}

/* After a successful sync of a maildir that has a flag or keyword change
   pending: flush if dovecot-keywords changed since the last flush that
   covered it.  A sync with MAILBOX_SYNC_FLAG_FAST may have skipped the
   maildir part, so only a full one ends the watch. */
static int
replicator_sync_keywords_after_sync(struct mailbox *box,
				    struct replicator_sync_mailbox *rbox,
				    bool full_sync)
{
	struct replicator_sync_keywords_id now;

	if (full_sync)
		rbox->keywords_pending = FALSE;
	replicator_sync_keywords_id(box, &now);
	if (replicator_sync_keywords_id_equal(&now, &rbox->keywords_flushed))
		return 0;
	rbox->keywords_flushed = now;
	return replicator_sync_mailbox_flush(box, replicator_sync_box_settings(box),
					     REPLICATOR_SYNC_FLUSH_SYNC);
}

static int
replicator_sync_sync_deinit(struct mailbox_sync_context *ctx,
			    struct mailbox_sync_status *status_r)
{
	struct mailbox *box = ctx->box;
	struct replicator_sync_mailbox *rbox =
		REPLICATOR_SYNC_CONTEXT_REQUIRE(box);
	bool full_sync = (ctx->flags & MAILBOX_SYNC_FLAG_FAST) == 0;

	/* the parent frees ctx */
	if (rbox->module_ctx.super.sync_deinit(ctx, status_r) < 0) {
		/* the command reports the sync error; the watch stays on
		   and the next sync flushes what this one wrote */
		return -1;
	}
	if (!rbox->keywords_pending ||
	    replicator_sync_keywords_after_sync(box, rbox, full_sync) == 0)
		return 0;
	/* The sync itself succeeded: say so, as mailbox_sync_deinit() would
	   for a 0.  index_storage_get_open_status() asserts it for
	   MAILBOX_FLAG_DROP_RECENT mailboxes (imap's SELECTed one), and imap
	   asks for that status right after a failed sync too. */
	box->synced = TRUE;
	return -1;
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
	struct replicator_sync_mailbox *rbox;

	if (REPLICATOR_SYNC_USER_CONTEXT(box->storage->user) == NULL ||
	    replicator_sync_storage_ignored(box->storage))
		return;

	rbox = p_new(box->pool, struct replicator_sync_mailbox, 1);
	rbox->module_ctx.super = *v;
	box->vlast = &rbox->module_ctx.super;
	v->transaction_commit = replicator_sync_transaction_commit;
	v->sync_deinit = replicator_sync_sync_deinit;
	MODULE_CONTEXT_SET(box, replicator_sync_storage_module, rbox);
}

/* May this node serve the user at all?  A client routed to a node that
   does not own the user must not be served: opening a mailbox already
   writes (mdbox rebuilds the shared storage's map index, maildir renames
   shared message files), long before any commit could be refused.  So the
   daemon is asked (OWNER, one round trip on the process' connection,
   pipelined behind VERSION on a fresh one) while the user is created, and
   a REFUSED sets user->error: mail_user_init() then fails before
   mail_namespaces_init() has created any storage, and nothing of the user
   is opened or written.

   What clients see with Dovecot 2.3.19 (the reason reaches only the log;
   the tests see the same IMAP, dovecot-lda and doveadm results on 2.4.1):
   - IMAP (imap-login hands the LOGIN over to imap, whose
     login_client_connected() fails in client_create_from_input()): the
     tagged "<tag> OK Logged in, but initialization failed." followed by
     "* BYE Internal error occurred. Refer to server log for more
     information." and the connection is closed; the log has
     "imap(<pid>): Error: <user->error>".
   - LMTP (read in lmtp-local.c, not run here): the recipient's reply to
     DATA is "451 4.3.0 Temporary internal error" (with
     lmtp_rcpt_check_quota = yes already the one to RCPT TO, which then
     asks OWNER too), logged as "Failed to initialize user:
     <user->error>"; the MTA retries.
   - dovecot-lda: "lda(<pid>): Fatal: <user->error>", exit code 75
     (EX_TEMPFAIL): the MTA retries.
   - doveadm: "doveadm(<user>): Error: <user->error>", exit code 75; an
     admin who means it passes -o replicator_sync_owner_check=no (2.3:
     -o plugin/replicator_sync_owner_check=no).

   Only a REFUSED refuses.  A FAIL (the daemon could not answer the
   question: an error of its own), an unreachable daemon, a timeout or
   garbage allow the user with a warning: every commit is still guarded by its FLUSH,
   which the daemon refuses for a user it does not own.  A 1.0 daemon (no
   OWNER, no ownership either) allows the user quietly.  Users Dovecot
   creates itself (the raw user of a delivery, shared-namespace owners)
   are not logins and are not asked about. */
static void
replicator_sync_check_owner(struct mail_user *user,
			    const struct replicator_sync_settings *set)
{
	struct replicator_sync_reply reply;
	struct event_passthrough *e;

	if (!set->owner_check || user->autocreated)
		return;
	replicator_sync_owner(set->socket_path, set->timeout_msecs,
			      user->username, &reply);
	e = event_create_passthrough(user->event)->
		add_int("wait_usecs", (intmax_t)reply.waited_usecs);
	switch (reply.status) {
	case REPLICATOR_SYNC_STATUS_OK:
		e_debug(e->set_name("replicator_sync_owner_ok")->event(),
			"replicator_sync: This node may serve user=%s "
			"(asked in %"PRIu64" us)", user->username,
			reply.waited_usecs);
		return;
	case REPLICATOR_SYNC_STATUS_REFUSED:
		user->error = p_strdup_printf(user->pool,
			"replicator_sync: User %s refused, another node serves "
			"it (dovecot-replicator: %s)", user->username,
			reply.reason);
		/* Dovecot logs user->error itself, as an error */
		e_debug(e->set_name("replicator_sync_owner_refused")->
			add_str("reason", reply.reason)->event(),
			"replicator_sync: %s", user->error);
		return;
	case REPLICATOR_SYNC_STATUS_UNSUPPORTED:
		e_debug(e->set_name("replicator_sync_owner_unchecked")->
			add_str("reason", reply.reason)->event(),
			"replicator_sync: Ownership of user=%s not checked: %s",
			user->username, reply.detail);
		return;
	case REPLICATOR_SYNC_STATUS_FAILED:
	case REPLICATOR_SYNC_STATUS_ERROR:
		e_warning(e->set_name("replicator_sync_owner_unchecked")->
			  add_str("reason", reply.reason)->event(),
			  "replicator_sync: Ownership of user=%s not checked, "
			  "serving it (its commits are still checked): %s",
			  user->username, reply.detail);
		return;
	}
	i_unreached();
}

static void replicator_sync_mail_user_created(struct mail_user *user)
{
	struct replicator_sync_user *ruser;
	struct replicator_sync_settings set;
	const char *error;
	int ret;

	ret = replicator_sync_settings_read(user, user->pool, &set, &error);
	if (ret < 0) {
		/* Dovecot 2.4 refused a value (one the configuration
		   itself had would already have stopped doveconf): the user
		   is not served unguarded, mail_user_init() fails and logs
		   user->error */
		user->error = p_strdup(user->pool, error);
		return;
	}
	if (ret == 0) {
		e_debug(user->event, "replicator_sync: Disabled for this user "
			"(replicator_sync=no)");
		return;
	}
	ruser = p_new(user->pool, struct replicator_sync_user, 1);
	ruser->set = set;
	MODULE_CONTEXT_SET(user, replicator_sync_user_module, ruser);
	replicator_sync_check_owner(user, &set);
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
