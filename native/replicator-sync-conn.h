#ifndef REPLICATOR_SYNC_CONN_H
#define REPLICATOR_SYNC_CONN_H

/* Deadline-bound line I/O on a unix stream socket.  Every call takes an
   absolute deadline on the monotonic clock, so one budget covers connect,
   write and read; nothing here can block past it. */

/* Protocol limit on a line, LF excluded. */
#define REPLICATOR_SYNC_MAX_LINE (64 * 1024)

struct replicator_sync_conn {
	int fd;
	/* socket path the fd is connected to (i_malloc'd) */
	char *path;
	size_t in_used;
	char in_buf[REPLICATOR_SYNC_MAX_LINE + 1];
};

/* Microseconds on CLOCK_MONOTONIC: ioloop_timeval is not updated while a
   commit blocks, so it cannot measure the wait. */
uint64_t replicator_sync_now_usecs(void);

/* Connect without blocking.  Returns 0, or -1 with a log-ready error. */
int replicator_sync_conn_open(struct replicator_sync_conn *conn,
			      const char *path, const char **error_r);
/* Close and forget any buffered input.  Safe to call when closed. */
void replicator_sync_conn_close(struct replicator_sync_conn *conn);
/* TRUE when an open connection has nothing pending: no unsolicited bytes,
   no EOF, no error.  Anything else means it must not carry a request. */
bool replicator_sync_conn_is_idle(struct replicator_sync_conn *conn);

/* Write all of data before the deadline (never raises SIGPIPE).
   Returns 0, or -1 with error_r set. */
int replicator_sync_conn_write(struct replicator_sync_conn *conn,
			       const void *data, size_t size,
			       uint64_t deadline_usecs, const char **error_r);
/* Read one LF-terminated line (returned without the LF, data stack
   allocated) before the deadline.  Returns 0, or -1 with error_r set on
   timeout, EOF, I/O error or an over-long line. */
int replicator_sync_conn_read_line(struct replicator_sync_conn *conn,
				   uint64_t deadline_usecs,
				   const char **line_r, const char **error_r);

#endif
