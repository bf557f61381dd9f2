// pthreads exercises glibc threads; TestPthreads builds it with gcc (static and dynamic)
// and compares its output in a micro VM with the host's.
//
//	pthreads short ROUNDS N  ROUNDS times: start N threads that return at once, join them
//	pthreads busy            producers and consumers on a mutex and condition variables,
//	                         a barrier and a read-write lock
//	pthreads clone           raw clone(2): where and when the thread ID is stored, bad
//	                         pointers, a TLS base out of range
//	pthreads fpu             a new thread's x87 control word and MXCSR are its creator's
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *quick(void *arg) { return arg; }

static int shortThreads(int rounds, int n) {
	pthread_t t[64];
	long joined = 0, sum = 0;
	if (n > 64)
		n = 64;
	for (int r = 0; r < rounds; r++) {
		for (int i = 0; i < n; i++) {
			int e = pthread_create(&t[i], NULL, quick, (void *)(long)(i + 1));
			if (e != 0) {
				printf("pthread_create: %s\n", strerror(e));
				return 1;
			}
		}
		for (int i = 0; i < n; i++) {
			void *v;
			int e = pthread_join(t[i], &v);
			if (e != 0) {
				printf("pthread_join: %s\n", strerror(e));
				return 1;
			}
			joined++;
			sum += (long)v;
		}
	}
	printf("joined %ld threads, sum %ld\n", joined, sum);
	return 0;
}

// A bounded queue with producers and consumers.
enum { producers = 4, consumers = 3, items = 2000, qcap = 8 };
static long queue[qcap];
static int qhead, qlen, doneProducers;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t notEmpty = PTHREAD_COND_INITIALIZER, notFull = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t barrier;
static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
static long shared[16];

static void *producer(void *arg) {
	long id = (long)arg;
	pthread_barrier_wait(&barrier);
	for (long i = 0; i < items; i++) {
		pthread_mutex_lock(&mu);
		while (qlen == qcap)
			pthread_cond_wait(&notFull, &mu);
		queue[(qhead + qlen) % qcap] = id * items + i;
		qlen++;
		pthread_cond_signal(&notEmpty);
		pthread_mutex_unlock(&mu);
		if (i % 100 == 0) {
			pthread_rwlock_wrlock(&rw);
			for (int k = 0; k < 16; k++)
				shared[k]++;
			pthread_rwlock_unlock(&rw);
		}
	}
	pthread_mutex_lock(&mu);
	doneProducers++;
	pthread_cond_broadcast(&notEmpty);
	pthread_mutex_unlock(&mu);
	return NULL;
}

static void *consumer(void *arg) {
	long sum = 0, count = 0, torn = 0;
	(void)arg;
	pthread_barrier_wait(&barrier);
	for (;;) {
		pthread_mutex_lock(&mu);
		while (qlen == 0 && doneProducers < producers)
			pthread_cond_wait(&notEmpty, &mu);
		if (qlen == 0) {
			pthread_mutex_unlock(&mu);
			break;
		}
		long v = queue[qhead];
		qhead = (qhead + 1) % qcap;
		qlen--;
		pthread_cond_signal(&notFull);
		pthread_mutex_unlock(&mu);
		sum += v;
		count++;
		if (count % 50 == 0) {
			pthread_rwlock_rdlock(&rw);
			for (int k = 1; k < 16; k++)
				torn += shared[k] != shared[0];
			pthread_rwlock_unlock(&rw);
		}
	}
	long *res = malloc(3 * sizeof(long));
	res[0] = sum;
	res[1] = count;
	res[2] = torn;
	return res;
}

static int busy(void) {
	pthread_t p[producers], c[consumers];
	pthread_barrier_init(&barrier, NULL, producers + consumers);
	for (long i = 0; i < consumers; i++)
		pthread_create(&c[i], NULL, consumer, NULL);
	for (long i = 0; i < producers; i++)
		pthread_create(&p[i], NULL, producer, (void *)i);
	for (int i = 0; i < producers; i++)
		pthread_join(p[i], NULL);
	long sum = 0, count = 0, torn = 0;
	for (int i = 0; i < consumers; i++) {
		long *r;
		pthread_join(c[i], (void **)&r);
		sum += r[0];
		count += r[1];
		torn += r[2];
		free(r);
	}
	long n = (long)producers * items;
	printf("consumed %ld items, sum %ld (want %ld), torn reads %ld, shared %ld\n", count, sum, n * (n - 1) / 2,
	       torn, shared[0]);
	return 0;
}

// Raw clone(2): the child runs fn on its own stack and must end with exit(2).
static long rawClone(unsigned long flags, void *stack, int *ptid, int *ctid, unsigned long tls, void (*fn)(void)) {
	long ret;
	register long r10 __asm__("r10") = (long)ctid;
	register long r8 __asm__("r8") = (long)tls;
	register long r12 __asm__("r12") = (long)fn;
	__asm__ volatile("syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jnz 1f\n\t"
			 "xor %%ebp, %%ebp\n\t"
			 "call *%%r12\n\t"
			 "ud2\n"
			 "1:"
			 : "=a"(ret)
			 : "0"((long)SYS_clone), "D"(flags), "S"(stack), "d"(ptid), "r"(r10), "r"(r8), "r"(r12)
			 : "rcx", "r11", "memory");
	return ret;
}

static int word, childWord = -1, done;
static int *watched = &word;
// A stack per case: a child that set done may still be running on its own.
static char stacks[4][64 << 10] __attribute__((aligned(16)));
#define top(i) (stacks[i] + sizeof stacks[i])

// sys makes a system call without touching the TLS (errno).
static long sys(long nr, long a, long b, long c) {
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "0"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

// child records what the watched word held when it started, and exits. It makes only raw
// system calls: it shares the parent's TLS.
static void child(void) {
	__atomic_store_n(&childWord, __atomic_load_n(watched, __ATOMIC_SEQ_CST), __ATOMIC_SEQ_CST);
	__atomic_store_n(&done, 1, __ATOMIC_SEQ_CST);
	sys(SYS_futex, (long)&done, FUTEX_WAKE, 1);
	sys(SYS_exit, 0, 0, 0);
	__builtin_unreachable();
}

// waitZero waits until *p is 0.
static void waitZero(int *p) {
	int v;
	while ((v = __atomic_load_n(p, __ATOMIC_SEQ_CST)) != 0)
		syscall(SYS_futex, p, FUTEX_WAIT, v, NULL, NULL, 0);
}

// waitOne waits until *p is 1.
static void waitOne(int *p) {
	while (__atomic_load_n(p, __ATOMIC_SEQ_CST) != 1)
		syscall(SYS_futex, p, FUTEX_WAIT, 0, NULL, NULL, 0);
}

static const unsigned long threadFlags =
    CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;

static void report(const char *what, long ret) {
	if (ret < 0)
		printf("%s: %s\n", what, strerror(-ret));
	else
		printf("%s: started\n", what);
}

static int cloneCases(void) {
	int *bad = (int *)8;

	// glibc's pthread_create: both IDs and the clear-on-exit in one word.
	for (int i = 0; i < 200; i++) {
		word = -1;
		childWord = -1;
		long tid = rawClone(threadFlags | CLONE_PARENT_SETTID | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID, top(0),
				    &word, &word, 0, child);
		if (tid <= 0) {
			report("same word", tid);
			return 1;
		}
		waitZero(&word);
		if (childWord != tid) {
			printf("same word, round %d: the child saw %d, its ID is %ld\n", i, childWord, tid);
			return 1;
		}
	}
	printf("same word: the child saw its ID every time, and it was cleared at exit\n");

	// CLONE_PARENT_SETTID alone: stored before the child runs.
	word = -1;
	done = 0;
	long tid = rawClone(threadFlags | CLONE_PARENT_SETTID, top(1), &word, NULL, 0, child);
	report("parent settid", tid);
	waitOne(&done);
	printf("parent settid: the child saw its ID %s\n", childWord == tid ? "yes" : "no");

	// Bad pointers are ignored: the thread starts.
	done = 0;
	tid = rawClone(threadFlags | CLONE_PARENT_SETTID | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID, top(2), bad, bad,
		       0, child);
	report("bad pointers", tid);
	if (tid > 0)
		waitOne(&done);

	// A TLS base past the user address space.
	tid = rawClone(threadFlags | CLONE_SETTLS, top(3), NULL, NULL, 0x7ffffffff000, child);
	report("tls at the end of user space", tid);
	tid = rawClone(threadFlags | CLONE_SETTLS, top(3), NULL, NULL, 1UL << 63, child);
	report("tls in kernel space", tid);
	// Unknown flags.
	tid = rawClone(threadFlags | CLONE_SIGHAND | CLONE_NEWNS, top(3), NULL, NULL, 0, child);
	report("CLONE_NEWNS with CLONE_FS", tid);

	// Let the last child leave before main returns through exit_group.
	sched_yield();
	return 0;
}

static unsigned short getCW(void) {
	unsigned short cw;
	__asm__ volatile("fnstcw %0" : "=m"(cw));
	return cw;
}
static void setCW(unsigned short cw) { __asm__ volatile("fldcw %0" ::"m"(cw)); }
static unsigned getMXCSR(void) {
	unsigned m;
	__asm__ volatile("stmxcsr %0" : "=m"(m));
	return m;
}
static void setMXCSR(unsigned m) { __asm__ volatile("ldmxcsr %0" ::"m"(m)); }

// fpuReport prints the caller's control state; with arg, it then changes it, as a thread
// that sets its rounding mode and ends.
static void *fpuReport(void *arg) {
	printf("  thread: cw %#x mxcsr %#x\n", getCW(), getMXCSR() & 0xffc0); // without the exception flags
	if (arg) {
		setCW(0x0f7f);
		setMXCSR(0x7f80);
	}
	return NULL;
}

static int fpu(void) {
	pthread_t t;
	unsigned short cws[] = {0x037f, 0x0b7f, 0x077f};
	unsigned mxcsrs[] = {0x1f80, 0x5f80, 0x9f80};
	for (int i = 0; i < 3; i++) {
		setCW(cws[i]);
		setMXCSR(mxcsrs[i]);
		printf("main: cw %#x mxcsr %#x\n", getCW(), getMXCSR() & 0xffc0);
		// The thread changes its state before it ends: the next one, maybe on the same
		// vCPU, must still start with main's.
		pthread_create(&t, NULL, fpuReport, (void *)1);
		pthread_join(t, NULL);
	}
	return 0;
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc == 4 && strcmp(argv[1], "short") == 0)
		return shortThreads(atoi(argv[2]), atoi(argv[3]));
	if (argc == 2 && strcmp(argv[1], "busy") == 0)
		return busy();
	if (argc == 2 && strcmp(argv[1], "clone") == 0)
		return cloneCases();
	if (argc == 2 && strcmp(argv[1], "fpu") == 0)
		return fpu();
	fprintf(stderr, "usage: pthreads short ROUNDS N | busy | clone | fpu\n");
	return 2;
}
