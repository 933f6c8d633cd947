#ifndef REPLICATOR_SYNC_MAILBOX_H
#define REPLICATOR_SYNC_MAILBOX_H

struct mailbox;
struct replicator_sync_settings;

/* Where in Dovecot's flow a flush happens.  It decides what a failure can
   still do to the client's answer. */
enum replicator_sync_flush_point {
	/* after a transaction commit: a failure becomes the command's
	   tagged NO (LDA: EX_TEMPFAIL, LMTP: 451) */
	REPLICATOR_SYNC_FLUSH_COMMIT,
	/* after a maildir sync rewrote dovecot-keywords: IMAP has fixed its
	   tagged reply before the sync, so a failure can only be an untagged
	   NO next to the tagged OK (doveadm, which checks, still fails) */
	REPLICATOR_SYNC_FLUSH_SYNC,
};

/* Ask the daemon to ship the mailbox's INDEX and CONTROL directories and
   wait for its answer, then apply the failure policy.  Returns 0, or -1
   with a storage error set (policy fail). */
int replicator_sync_mailbox_flush(struct mailbox *box,
				  const struct replicator_sync_settings *set,
				  enum replicator_sync_flush_point point);

#endif
