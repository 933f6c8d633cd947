/* Deadline-bound line I/O for the replicator sync-commit plugin.

   The plugin runs inside imap/lmtp/doveadm while they hold a mailbox
   transaction, so it must never block beyond its budget: the socket is
   non-blocking and every wait is a poll() with the time left until the
   deadline.  No alarm() (it would clash with the process' own timers) and
   MSG_NOSIGNAL instead of touching the SIGPIPE disposition. */

#include "lib.h"
#include "net.h"
#include "str-sanitize.h"
#include "replicator-sync-conn.h"

#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t replicator_sync_now_usecs(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		i_fatal("clock_gettime(CLOCK_MONOTONIC) failed: %m");
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Milliseconds left until the deadline, rounded up so that a wait never
   degenerates into a busy loop; 0 when the deadline has passed. */
static int replicator_sync_msecs_left(uint64_t deadline_usecs)
{
	uint64_t now = replicator_sync_now_usecs();

	if (now >= deadline_usecs)
		return 0;
	return (int)((deadline_usecs - now + 999) / 1000);
}

/* Wait for events on the socket.  Returns 1 when ready, 0 on timeout,
   -1 on poll() failure (errno set). */
static int replicator_sync_conn_wait(struct replicator_sync_conn *conn,
				     short events, uint64_t deadline_usecs)
{
	struct pollfd pfd = { .fd = conn->fd, .events = events };
	int msecs, ret;

	while ((msecs = replicator_sync_msecs_left(deadline_usecs)) > 0) {
		ret = poll(&pfd, 1, msecs);
		if (ret > 0)
			return 1;
		if (ret < 0 && errno != EINTR)
			return -1;
	}
	return 0;
}

int replicator_sync_conn_open(struct replicator_sync_conn *conn,
			      const char *path, const char **error_r)
{
	i_assert(conn->fd == -1);

	conn->fd = net_connect_unix(path);
	if (conn->fd == -1) {
		*error_r = t_strdup_printf("connect(%s) failed: %m", path);
		return -1;
	}
	fd_close_on_exec(conn->fd, TRUE);
	conn->path = i_strdup(path);
	conn->in_used = 0;
	return 0;
}

void replicator_sync_conn_close(struct replicator_sync_conn *conn)
{
	if (conn->fd != -1)
		i_close_fd_path(&conn->fd, conn->path);
	i_free_and_null(conn->path);
	conn->in_used = 0;
}

bool replicator_sync_conn_is_idle(struct replicator_sync_conn *conn)
{
	struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };

	if (conn->in_used > 0)
		return FALSE;
	/* readable means EOF, an error or bytes nobody asked for */
	return poll(&pfd, 1, 0) == 0;
}

int replicator_sync_conn_write(struct replicator_sync_conn *conn,
			       const void *data, size_t size,
			       uint64_t deadline_usecs, const char **error_r)
{
	const unsigned char *p = data;
	ssize_t ret;
	int wret;

	while (size > 0) {
		ret = send(conn->fd, p, size, MSG_NOSIGNAL);
		if (ret > 0) {
			p += ret;
			size -= (size_t)ret;
			continue;
		}
		if (ret < 0 && errno != EAGAIN && errno != EINTR) {
			*error_r = t_strdup_printf("send(%s) failed: %m",
						   conn->path);
			return -1;
		}
		wret = replicator_sync_conn_wait(conn, POLLOUT, deadline_usecs);
		if (wret <= 0) {
			*error_r = wret == 0 ? "timed out while sending" :
				t_strdup_printf("poll(%s) failed: %m", conn->path);
			return -1;
		}
	}
	return 0;
}

/* Take one complete line out of the input buffer, if there is one. */
static bool replicator_sync_conn_take_line(struct replicator_sync_conn *conn,
					   const char **line_r)
{
	const char *lf = memchr(conn->in_buf, '\n', conn->in_used);
	size_t len, rest;

	if (lf == NULL)
		return FALSE;
	len = (size_t)(lf - conn->in_buf);
	*line_r = t_strndup(conn->in_buf, len);
	rest = conn->in_used - len - 1;
	memmove(conn->in_buf, lf + 1, rest);
	conn->in_used = rest;
	return TRUE;
}

/* One recv() into the buffer.  Returns 1 on data, -1 with error_r set on
   EOF or error, 0 when nothing was there after all. */
static int replicator_sync_conn_fill(struct replicator_sync_conn *conn,
				     const char **error_r)
{
	ssize_t ret;

	ret = recv(conn->fd, conn->in_buf + conn->in_used,
		   sizeof(conn->in_buf) - conn->in_used, 0);
	if (ret > 0) {
		conn->in_used += (size_t)ret;
		return 1;
	}
	if (ret == 0) {
		*error_r = conn->in_used == 0 ?
			"daemon closed the connection" :
			t_strdup_printf("daemon closed the connection "
				"in the middle of a line: '%s'",
				str_sanitize(t_strndup(conn->in_buf,
						       conn->in_used), 128));
		return -1;
	}
	if (errno == EAGAIN || errno == EINTR)
		return 0;
	*error_r = t_strdup_printf("recv(%s) failed: %m", conn->path);
	return -1;
}

int replicator_sync_conn_read_line(struct replicator_sync_conn *conn,
				   uint64_t deadline_usecs,
				   const char **line_r, const char **error_r)
{
	int ret;

	while (!replicator_sync_conn_take_line(conn, line_r)) {
		if (conn->in_used == sizeof(conn->in_buf)) {
			*error_r = "reply line too long";
			return -1;
		}
		ret = replicator_sync_conn_wait(conn, POLLIN, deadline_usecs);
		if (ret <= 0) {
			*error_r = ret == 0 ? "timed out waiting for the reply" :
				t_strdup_printf("poll(%s) failed: %m", conn->path);
			return -1;
		}
		if (replicator_sync_conn_fill(conn, error_r) < 0)
			return -1;
	}
	return 0;
}
