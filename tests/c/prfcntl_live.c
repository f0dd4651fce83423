/*
 * Drives one PFC* request through a real SVR4-personality mount, the way a debugger would:
 *
 *     prfcntl_live /proc/NNNNN REQUEST [ARG]
 *
 * REQUEST is getpr, opent [ADDR], exclu [ADDR], stop, wstop, wstop0 (a zero argument),
 * wstop-alarm (interrupted by SIGALRM after a second), run, smask MASK, gmask, csig,
 * kill SIG, sexec, rexec, nice N, sstep, getregs, putregs (writes back what getregs read),
 * read ADDR (four bytes of the address space) or bogus (a request no PFC file knows).
 * Prints what the request returned, one "key=value" per line, or "errno=NAME" and exits 1.
 * agent/tests/fuse.rs runs it against real processes.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prfcntl.h"

static const char *errname(int e)
{
	switch (e) {
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EINVAL: return "EINVAL";
	case EFAULT: return "EFAULT";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case EBUSY: return "EBUSY";
	case ENOTTY: return "ENOTTY";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	default: return strerror(e);
	}
}

static int fail(void)
{
	printf("errno=%s\n", errname(errno));
	return 1;
}

static void on_alarm(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s FILE REQUEST [ARG]\n", argv[0]);
		return 2;
	}
	const char *req = argv[2];
	long long arg = argc > 3 ? strtoll(argv[3], NULL, 0) : 0;
	int fd = open(argv[1], strcmp(req, "read") == 0 ? O_RDONLY : O_RDWR);
	if (fd < 0)
		return fail();

	if (strcmp(req, "getpr") == 0) {
		struct prpsinfo p;
		if (ioctl(fd, PFCGETPR, &p) < 0)
			return fail();
		printf("pid=%d\nppid=%d\nstate=%d\nsname=%c\nzomb=%d\nnice=%d\neuid=%u\n"
		       "size=%llu\nclname=%s\nfname=%s\npsargs=%s\n",
		       p.pr_pid, p.pr_ppid, p.pr_state, p.pr_sname, p.pr_zomb, p.pr_nice,
		       p.pr_euid, (unsigned long long)p.pr_size, p.pr_clname, p.pr_fname,
		       p.pr_psargs);
	} else if (strcmp(req, "opent") == 0) {
		struct prtextfile t = { .addr = (uint64_t)arg };
		if (ioctl(fd, PFCOPENT, &t) < 0)
			return fail();
		/* The descriptor the manual's PFCOPENT returns: opened from the path. */
		int text = open(t.path, O_RDONLY);
		char magic[4] = { 0 };
		if (text < 0 || read(text, magic, 4) != 4)
			return fail();
		printf("path=%s\nelf=%d\n", t.path, memcmp(magic, "\177ELF", 4) == 0);
	} else if (strcmp(req, "exclu") == 0) {
		uint64_t addr = (uint64_t)arg;
		if (ioctl(fd, PFCEXCLU, &addr) < 0)
			return fail();
		printf("ok=1\n");
	} else if (strcmp(req, "stop") == 0 || strcmp(req, "wstop") == 0) {
		int32_t status = -1;
		if (ioctl(fd, req[0] == 's' ? PFCSTOP : PFCWSTOP, &status) < 0)
			return fail();
		/* Untouched unless the process has exited. */
		printf("status=%d\n", status);
	} else if (strcmp(req, "wstop0") == 0) {
		if (ioctl(fd, PFCWSTOP, NULL) < 0)
			return fail();
		printf("ok=1\n");
	} else if (strcmp(req, "wstop-alarm") == 0) {
		struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART */
		int32_t status = -1;
		sigaction(SIGALRM, &sa, NULL);
		alarm(1);
		if (ioctl(fd, PFCWSTOP, &status) < 0)
			return fail();
		printf("status=%d\n", status);
	} else if (strcmp(req, "run") == 0 || strcmp(req, "csig") == 0 ||
		   strcmp(req, "sexec") == 0 || strcmp(req, "rexec") == 0 ||
		   strcmp(req, "sstep") == 0) {
		unsigned long code = strcmp(req, "run") == 0	 ? PFCRUN :
				     strcmp(req, "csig") == 0	 ? PFCCSIG :
				     strcmp(req, "sexec") == 0 ? PFCSEXEC :
				     strcmp(req, "rexec") == 0 ? PFCREXEC :
								 PFCSSTEP;
		if (ioctl(fd, code, 0) < 0)
			return fail();
		printf("ok=1\n");
	} else if (strcmp(req, "smask") == 0) {
		uint64_t mask = (uint64_t)arg;
		if (ioctl(fd, PFCSMASK, &mask) < 0)
			return fail();
		printf("ok=1\n");
	} else if (strcmp(req, "gmask") == 0) {
		uint64_t mask = 0;
		if (ioctl(fd, PFCGMASK, &mask) < 0)
			return fail();
		printf("mask=%#llx\n", (unsigned long long)mask);
	} else if (strcmp(req, "kill") == 0 || strcmp(req, "nice") == 0) {
		int32_t n = (int32_t)arg;
		if (ioctl(fd, req[0] == 'k' ? PFCKILL : PFCNICE, &n) < 0)
			return fail();
		printf("ok=1\n");
	} else if (strcmp(req, "getregs") == 0 || strcmp(req, "putregs") == 0) {
		struct prregs r;
		if (ioctl(fd, PFCGETREGS, &r) < 0)
			return fail();
		if (req[0] == 'p' && ioctl(fd, PFCPUTREGS, &r) < 0)
			return fail();
#if defined(__x86_64__)
		printf("pc=%#llx\n", (unsigned long long)r.r[16]); /* rip */
#elif defined(__aarch64__)
		printf("pc=%#llx\n", (unsigned long long)r.r[32]);
#endif
	} else if (strcmp(req, "read") == 0) {
		unsigned char b[4];
		if (pread(fd, b, 4, (off_t)arg) != 4)
			return fail();
		printf("bytes=%02x%02x%02x%02x\n", b[0], b[1], b[2], b[3]);
	} else if (strcmp(req, "bogus") == 0) {
		int32_t n = 0;
		if (ioctl(fd, _IOW(PFC_TYPE, 99, int32_t), &n) < 0)
			return fail();
		printf("ok=1\n");
	} else {
		fprintf(stderr, "unknown request %s\n", req);
		return 2;
	}
	return 0;
}
