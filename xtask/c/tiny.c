/* N tiny processes for the benchmarks at scale (cargo xtask bench --processes 100000): forks
 * N-1 children that pause(2), prints "ready" once they all exist, then pauses itself. Built
 * static, so a process is a few pages of its own and no loader. Killed as a process group. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1;
	for (long i = 1; i < n; i++) {
		pid_t p = fork();
		if (p == 0)
			for (;;)
				pause();
		if (p < 0) {
			perror("fork");
			return 1;
		}
	}
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}
