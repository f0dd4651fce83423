/*
 * Prints every PFC* request code and the argument structs' layout from include/prfcntl.h, one
 * per line, for agent/src/view/svr4.rs's test to compare with the Rust definitions.
 */
#include <stddef.h>
#include <stdio.h>

#include "prfcntl.h"

#define CODE(name) printf("%s %#010x\n", #name, (unsigned)(name))

int main(void)
{
	CODE(PFCGETPR);
	CODE(PFCOPENT);
	CODE(PFCEXCLU);
	CODE(PFCSTOP);
	CODE(PFCWSTOP);
	CODE(PFCRUN);
	CODE(PFCSMASK);
	CODE(PFCGMASK);
	CODE(PFCCSIG);
	CODE(PFCKILL);
	CODE(PFCSEXEC);
	CODE(PFCREXEC);
	CODE(PFCNICE);
	CODE(PFCSSTEP);
	CODE(PFCGETREGS);
	CODE(PFCPUTREGS);
	printf("sizeof prpsinfo %zu\n", sizeof(struct prpsinfo));
	printf("sizeof propentext %zu\n", sizeof(struct prtextfile));
	printf("sizeof prregs %zu\n", sizeof(struct prregs));
	printf("offsetof pr_lttydev %zu\n", offsetof(struct prpsinfo, pr_lttydev));
	printf("offsetof pr_start %zu\n", offsetof(struct prpsinfo, pr_start));
	printf("offsetof pr_psargs %zu\n", offsetof(struct prpsinfo, pr_psargs));
	return 0;
}
