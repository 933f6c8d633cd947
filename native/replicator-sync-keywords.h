#ifndef REPLICATOR_SYNC_KEYWORDS_H
#define REPLICATOR_SYNC_KEYWORDS_H

#include <sys/types.h>

struct mailbox;

/* maildir's dovecot-keywords (CONTROL dir) maps the letters a..z in body
   file names to keyword names.  A sync that applies a committed keyword
   change renames the body file on the shared mail root, then writes the
   new mapping; a peer that gets the renamed file without the mapping shows
   "unknown-<n>" forever.  This watches the file so that the plugin flushes
   after exactly the syncs that rewrote it. */

/* Identity of dovecot-keywords at one moment.  Dovecot only ever replaces
   the file (write to dovecot-keywords.lock, rename over it) and forces its
   mtime to grow, so any rewrite changes the inode and ctime. */
struct replicator_sync_keywords_id {
	/* FALSE: stat() failed for another reason than ENOENT, or the path
	   is unknown; such an id never equals another one */
	bool known;
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	time_t mtime, ctime;
	unsigned long mtime_nsec, ctime_nsec;
};

/* stat() the mailbox's dovecot-keywords (maildir only). */
void replicator_sync_keywords_id(struct mailbox *box,
				 struct replicator_sync_keywords_id *id_r);
/* TRUE when both ids were taken successfully and describe the same file
   state (both absent counts as the same). */
bool replicator_sync_keywords_id_equal(const struct replicator_sync_keywords_id *a,
				       const struct replicator_sync_keywords_id *b);

#endif
