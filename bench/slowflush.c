/* A disk that flushes slowly, for bench.slow_flush: loaded into Dovecot's processes with
   LD_PRELOAD, it makes every fdatasync() and fsync() take SLOW_FLUSH_US microseconds longer
   (default 2000) before doing the real one. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static void slow_down(void)
{
	const char *us = getenv("SLOW_FLUSH_US");

	usleep(us != NULL ? (useconds_t)atoi(us) : 2000);
}

int fdatasync(int fd)
{
	static int (*real)(int);

	if (real == NULL)
		real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	slow_down();
	return real(fd);
}

int fsync(int fd)
{
	static int (*real)(int);

	if (real == NULL)
		real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	slow_down();
	return real(fd);
}
