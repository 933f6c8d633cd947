/* Watching maildir's dovecot-keywords for the sync-time flush.

   Why a stat() and not "a keyword change was committed": a STORE that only
   uses keywords the mailbox already has a letter for, or only system
   flags, makes the sync rename body files but never rewrite the mapping;
   those renames need no flush (the index log, flushed at commit, already
   says the same and the bodies are on the shared mail root).  Two stat()
   calls per flag-changing command cost microseconds; a needless FLUSH
   costs a round trip to the peers.  Dovecot's own private "changed" bit
   in struct maildir_keywords is not part of any installed header. */

#include "lib.h"
#include "mail-storage-private.h"
#include "replicator-sync-keywords.h"

#include <sys/stat.h>

/* maildir-keywords.h's MAILDIR_KEYWORDS_NAME; that header drags in
   maildir-storage.h, whose private structs we do not need. */
#define REPLICATOR_SYNC_KEYWORDS_FILE "dovecot-keywords"

void replicator_sync_keywords_id(struct mailbox *box,
				 struct replicator_sync_keywords_id *id_r)
{
	const char *dir;
	struct stat st;

	i_zero(id_r);
	if (mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_CONTROL, &dir) <= 0)
		return;
	if (stat(t_strconcat(dir, "/"REPLICATOR_SYNC_KEYWORDS_FILE, NULL),
		 &st) < 0) {
		/* ENOENT: no keyword ever got a letter in this mailbox */
		id_r->known = errno == ENOENT;
		return;
	}
	id_r->known = TRUE;
	id_r->exists = TRUE;
	id_r->dev = st.st_dev;
	id_r->ino = st.st_ino;
	id_r->size = st.st_size;
	id_r->mtime = st.st_mtime;
	id_r->ctime = st.st_ctime;
	id_r->mtime_nsec = ST_MTIME_NSEC(st);
	id_r->ctime_nsec = ST_CTIME_NSEC(st);
}

bool replicator_sync_keywords_id_equal(const struct replicator_sync_keywords_id *a,
				       const struct replicator_sync_keywords_id *b)
{
	if (!a->known || !b->known || a->exists != b->exists)
		return FALSE;
	if (!a->exists)
		return TRUE;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
		a->mtime == b->mtime && a->ctime == b->ctime &&
		a->mtime_nsec == b->mtime_nsec && a->ctime_nsec == b->ctime_nsec;
}
