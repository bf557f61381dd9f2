/* pieprog reports where it was loaded and what its auxiliary vector says, for
   TestStaticPIE, which builds it with gcc -static-pie when the Go toolchain cannot make a
   static PIE of testdata/pieprog (which prints the same lines). */
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <sys/auxv.h>
#include <unistd.h>

/* A pointer in initialized data: its value needs a relative relocation, which the program
   applies to itself before main runs, since there is no ld.so. */
static const char *greeting = "hello from a static PIE";

int main(void) {
	puts(greeting);
	printf("main 0x%lx\n", (unsigned long)&main);
	printf("AT_PHDR 0x%lx\n", getauxval(AT_PHDR));
	printf("AT_ENTRY 0x%lx\n", getauxval(AT_ENTRY));
	printf("AT_BASE 0x%lx\n", getauxval(AT_BASE));
	printf("AT_RANDOM 0x%lx\n", getauxval(AT_RANDOM));
	printf("AT_PAGESZ %lu\n", getauxval(AT_PAGESZ));
	printf("phdr0 %u\n", ((const ElfW(Phdr) *)getauxval(AT_PHDR))[0].p_type);
	printf("pagesize %ld\n", sysconf(_SC_PAGESIZE));
	return 0;
}
