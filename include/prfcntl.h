/*
 * prfcntl.h - bpfproc's SVR4 (RISC/os PROC(4)) personality: the PFC* control requests.
 *
 * The manual's PFC* commands are fcntl(2) commands on an open /proc/NNNNN file. A FUSE file
 * system cannot receive fcntl commands, so bpfproc serves them as ioctl(2) requests with the
 * same names: ioctl(fd, PFCGETPR, &info) where the manual has fcntl(fd, PFCGETPR, &info).
 * Each request encodes its argument's size and direction (_IOR: the file system fills it,
 * _IOW: it reads it, _IOWR: both), which FUSE needs to copy the argument.
 *
 * Differences from the manual (docs/personalities/svr4.md has the whole list):
 *  - PFCOPENT cannot return a new descriptor over FUSE; it fills prtextfile.path with the text
 *    file's path, which the caller opens.
 *  - PFCSTOP/PFCWSTOP with a zero arg on an exited process fail with EFAULT, not ENOENT: the
 *    server never sees the pointer, only the kernel's copy of the status to it fails.
 *  - Unknown request codes are ENOTTY.
 *  - PFCNICE takes SVR4's nice scale, 0..39, 20 being Linux's nice 0.
 *  - PFCSMASK/PFCGMASK masks are 64-bit: bit n-1 is signal n.
 *
 * Keep in step with agent/src/view/svr4.rs; tests/c/prfcntl_test.c checks that they agree.
 */
#ifndef BPFPROC_PRFCNTL_H
#define BPFPROC_PRFCNTL_H

#include <stdint.h>
#include <sys/ioctl.h>

#define PRCLSZ 8
#define PRFNSZ 16
#define PRARGSZ 80
#define PRPATHSZ 4096
#define PRNODEV ((uint64_t)-1) /* pr_lttydev without a controlling terminal */

#if defined(__x86_64__)
#define PRREGS_WORDS 27 /* struct user_regs_struct */
#elif defined(__aarch64__)
#define PRREGS_WORDS 34 /* struct user_regs_struct: regs[31], sp, pc, pstate */
#else
#error "prfcntl.h: register layout not defined for this architecture"
#endif

struct prtimespec {
	int64_t tv_sec;
	int64_t tv_nsec;
};

/* PFCGETPR: SVR4's prpsinfo_t, the fields Linux can fill, fixed sizes (208 bytes). */
struct prpsinfo {
	int8_t pr_state;    /* 1 SSLEEP, 2 SRUN, 3 SZOMB, 4 SSTOP */
	uint8_t pr_sname;   /* 'S', 'R', 'Z', 'T' */
	int8_t pr_zomb;     /* exited, not yet waited for */
	int8_t pr_nice;     /* 0..39, 20 = Linux nice 0 */
	uint32_t pr_flag;   /* Linux PF_* flags */
	uint32_t pr_uid;
	uint32_t pr_gid;
	uint32_t pr_euid;
	uint32_t pr_egid;
	int32_t pr_pid;
	int32_t pr_ppid;
	int32_t pr_pgrp;
	int32_t pr_sid;
	int32_t pr_pri;     /* higher is more urgent: 139 - Linux prio */
	uint32_t _pad;
	uint64_t pr_lttydev; /* makedev(major, minor), or PRNODEV */
	uint64_t pr_size;    /* virtual memory, pages */
	uint64_t pr_rssize;  /* resident set, pages */
	struct prtimespec pr_start; /* since the epoch */
	struct prtimespec pr_time;  /* user + system CPU */
	char pr_clname[PRCLSZ];     /* "TS", "RT", "DL", "SYS" */
	char pr_fname[PRFNSZ];      /* command name */
	char pr_psargs[PRARGSZ];    /* start of the argument list */
};

/* PFCOPENT: addr selects the region (0: the text); path receives the file's path. */
struct prtextfile {
	uint64_t addr;
	char path[PRPATHSZ];
};

/* PFCGETREGS/PFCPUTREGS: the general registers, one 64-bit word each. */
struct prregs {
	uint64_t r[PRREGS_WORDS];
};

#define PFC_TYPE 'q'

#define PFCGETPR   _IOR(PFC_TYPE, 1, struct prpsinfo)
#define PFCOPENT   _IOWR(PFC_TYPE, 2, struct prtextfile)
#define PFCEXCLU   _IOW(PFC_TYPE, 3, uint64_t)
#define PFCSTOP    _IOR(PFC_TYPE, 4, int32_t)  /* exit status if it has exited */
#define PFCWSTOP   _IOR(PFC_TYPE, 5, int32_t)
#define PFCRUN     _IO(PFC_TYPE, 6)
#define PFCSMASK   _IOW(PFC_TYPE, 7, uint64_t)
#define PFCGMASK   _IOR(PFC_TYPE, 8, uint64_t)
#define PFCCSIG    _IO(PFC_TYPE, 9)
#define PFCKILL    _IOW(PFC_TYPE, 10, int32_t)
#define PFCSEXEC   _IO(PFC_TYPE, 11)
#define PFCREXEC   _IO(PFC_TYPE, 12)
#define PFCNICE    _IOW(PFC_TYPE, 13, int32_t)
#define PFCSSTEP   _IO(PFC_TYPE, 14)
#define PFCGETREGS _IOR(PFC_TYPE, 15, struct prregs)
#define PFCPUTREGS _IOW(PFC_TYPE, 16, struct prregs)

#endif /* BPFPROC_PRFCNTL_H */
