// clockprog prints every clock read through the C library (the vDSO when the process has
// one), gettimeofday and time, then counts how often CLOCK_MONOTONIC went backwards over
// argv[1] reads, and reads CLOCK_REALTIME once more through the system call itself. The
// micro VM's vDSO test compares the values with the host's clocks around the run.
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	long n = argc > 1 ? atol(argv[1]) : 1000;
	for (int clk = 0; clk <= 7; clk++) {
		struct timespec ts;
		if (clock_gettime(clk, &ts) != 0) {
			perror("clock_gettime");
			return 1;
		}
		printf("clock %d %lld.%09ld\n", clk, (long long)ts.tv_sec, ts.tv_nsec);
	}
	struct timeval tv;
	if (gettimeofday(&tv, NULL) != 0) {
		perror("gettimeofday");
		return 1;
	}
	printf("gettimeofday %lld.%06ld\n", (long long)tv.tv_sec, (long)tv.tv_usec);
	time_t t = time(NULL);
	printf("time %lld\n", (long long)t);
	struct timespec prev, cur;
	long back = 0;
	clock_gettime(CLOCK_MONOTONIC, &prev);
	for (long i = 0; i < n; i++) {
		clock_gettime(CLOCK_MONOTONIC, &cur);
		if (cur.tv_sec < prev.tv_sec || (cur.tv_sec == prev.tv_sec && cur.tv_nsec < prev.tv_nsec))
			back++;
		prev = cur;
	}
	printf("backwards %ld of %ld\n", back, n);
	struct timespec s;
	if (syscall(SYS_clock_gettime, CLOCK_REALTIME, &s) != 0) {
		perror("syscall clock_gettime");
		return 1;
	}
	printf("syscall %lld.%09ld\n", (long long)s.tv_sec, s.tv_nsec);
	return 0;
}
