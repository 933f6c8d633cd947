/* One FLUSH for one mailbox, and the failure policy around it.

   Shared by the two hook points (transaction commit, maildir sync): both
   name the same directories and use the same socket, timeout and policy;
   they differ only in what a failure can still change for the client (see
   enum replicator_sync_flush_point). */

#include "lib.h"
#include "array.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "replicator-sync-settings.h"
#include "replicator-sync-client.h"
#include "replicator-sync-mailbox.h"

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

static const char *
replicator_sync_point_name(enum replicator_sync_flush_point point)
{
	return point == REPLICATOR_SYNC_FLUSH_COMMIT ? "commit" : "sync";
}

static void replicator_sync_log_flushed(struct mailbox *box,
					enum replicator_sync_flush_point point,
					const struct replicator_sync_reply *reply)
{
	e_debug(event_create_passthrough(box->event)->
		set_name("replicator_sync_flushed")->
		add_str("flush_point", replicator_sync_point_name(point))->
		add_int("wait_usecs", (intmax_t)reply->waited_usecs)->
		add_int("peers_acked", reply->peers_acked)->event(),
		"replicator_sync: Flushed user=%s mailbox=%s%s: "
		"waited %"PRIu64".%03u ms, %u peer(s) acked",
		box->storage->user->username, mailbox_get_vname(box),
		point == REPLICATOR_SYNC_FLUSH_SYNC ?
		" (dovecot-keywords after sync)" : "",
		reply->waited_usecs / 1000,
		(unsigned int)(reply->waited_usecs % 1000),
		reply->peers_acked);
}

/* policy=fail after a sync: IMAP decided the command's tagged reply before
   the sync, so the client may hold a tagged OK for a change whose keyword
   names are not on a peer.  That is an error in the log, not a warning.
   Callers that check the sync themselves (doveadm) fail the command. */
static int replicator_sync_sync_failed(struct mailbox *box,
				       struct event_passthrough *e,
				       const struct replicator_sync_reply *reply)
{
	struct mail_user *user = box->storage->user;
	bool imap = strcmp(user->service, "imap") == 0;

	e_error(e->set_name("replicator_sync_failed")->event(),
		"replicator_sync: Keyword names (dovecot-keywords) written by "
		"a mailbox sync not replicated (policy=fail): user=%s "
		"mailbox=%s: %s%s", user->username, mailbox_get_vname(box),
		reply->detail, !imap ? "" : "; the client gets an untagged NO, "
		"its tagged reply was decided before the sync");
	mail_storage_set_error(box->storage, MAIL_ERROR_TEMP, t_strdup_printf(
		"%sKeyword change not yet replicated to a peer (replicator: %s)",
		imap ? "[UNAVAILABLE] " : "", reply->reason));
	return -1;
}

/* REFUSED: the daemon may not acknowledge this user's changes at all
   (another node owns the user, or this node's ownership lease is not
   certainly valid).  That is not a replication failure a policy may
   forgive: under degrade the client would hold an OK for a change the
   owner never sees.  So the command fails whatever the policy, as under
   fail (IMAP: tagged NO [UNAVAILABLE]; LDA: EX_TEMPFAIL, LMTP: 451; after
   a maildir sync only an untagged NO), and the log has an error. */
static int replicator_sync_refused(struct mailbox *box,
				   enum replicator_sync_flush_point point,
				   struct event_passthrough *e,
				   const struct replicator_sync_reply *reply)
{
	struct mail_user *user = box->storage->user;
	bool imap = strcmp(user->service, "imap") == 0;
	bool sync = point == REPLICATOR_SYNC_FLUSH_SYNC;

	e_error(e->set_name("replicator_sync_refused")->event(),
		"replicator_sync: Change refused by the daemon, failing the "
		"command whatever the policy: user=%s mailbox=%s: %s%s",
		user->username, mailbox_get_vname(box), reply->detail,
		!(imap && sync) ? "" : " (keyword names written by a mailbox "
		"sync; the client gets an untagged NO, its tagged reply was "
		"decided before the sync)");
	mail_storage_set_error(box->storage, MAIL_ERROR_TEMP, t_strdup_printf(
		"%s%s refused: this server may not accept changes for this "
		"account now (replicator: %s); retry", imap ? "[UNAVAILABLE] " : "",
		sync ? "Keyword change" : "Change", reply->reason));
	return -1;
}

/* Apply the failure policy.  With "fail" a commit gets a tagged NO; the
   change stays committed locally, so a client retry may duplicate a
   message, which is accepted: losing one is not.  A REFUSED reply fails
   under every policy. */
static int replicator_sync_failed(struct mailbox *box,
				  const struct replicator_sync_settings *set,
				  enum replicator_sync_flush_point point,
				  const struct replicator_sync_reply *reply)
{
	struct mail_user *user = box->storage->user;
	struct event_passthrough *e =
		event_create_passthrough(box->event)->
		add_str("reason", reply->reason)->
		add_str("flush_point", replicator_sync_point_name(point))->
		add_int("wait_usecs", (intmax_t)reply->waited_usecs);

	if (reply->status == REPLICATOR_SYNC_STATUS_REFUSED)
		return replicator_sync_refused(box, point, e, reply);
	if (set->policy == REPLICATOR_SYNC_POLICY_DEGRADE) {
		e_warning(e->set_name("replicator_sync_degraded")->event(),
			  "replicator_sync: Change not replicated, answering OK "
			  "(policy=degrade): user=%s mailbox=%s: %s",
			  user->username, mailbox_get_vname(box), reply->detail);
		return 0;
	}
	if (point == REPLICATOR_SYNC_FLUSH_SYNC)
		return replicator_sync_sync_failed(box, e, reply);
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

int replicator_sync_mailbox_flush(struct mailbox *box,
				  const struct replicator_sync_settings *set,
				  enum replicator_sync_flush_point point)
{
	struct replicator_sync_request req;
	struct replicator_sync_reply reply;

	i_zero(&req);
	if (replicator_sync_mailbox_dirs(box, &req.dirs) < 0) {
		i_zero(&reply);
		reply.reason = "mailbox directories unknown";
		reply.detail = t_strconcat("mailbox_get_path_to() failed: ",
			mailbox_get_last_internal_error(box, NULL), NULL);
		return replicator_sync_failed(box, set, point, &reply);
	}
	if (req.dirs[0] == NULL)
		return 0;
	req.socket_path = set->socket_path;
	req.timeout_msecs = set->timeout_msecs;
	req.policy = replicator_sync_policy_name(set->policy);
	req.username = box->storage->user->username;

	replicator_sync_flush(&req, &reply);
	if (reply.status != REPLICATOR_SYNC_STATUS_OK)
		return replicator_sync_failed(box, set, point, &reply);
	replicator_sync_log_flushed(box, point, &reply);
	return 0;
}
