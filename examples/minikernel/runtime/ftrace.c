/*
 * The minikernel's ftrace runtime: site table, single-word patching, tracer.
 *
 * Built without -fpatchable-function-entry: the runtime is not traced.
 *
 * The records between __start_mcount_loc and __stop_mcount_loc (gathered by
 * mcount.lds, like the kernel's MCOUNT_REC()) are absolute addresses.  In a
 * build rewritten by ftpatch each one points at the BL slot, whose word
 * before it is already `mov x9, x30`: enabling or disabling a site is one
 * aligned 32-bit store, NOP <-> BL ftrace_caller, a pair the architecture
 * allows to be modified while other CPUs execute it (ARM DDI 0487 B2.2.5).
 *
 * With -DFTRACE_NAIVE the runtime works on pristine objects the old way:
 * the record points at the first of two NOPs and every switch writes both
 * words (enable: MOV then BL; disable: BL then MOV back to NOP).  NOP <-> MOV
 * is not in the permitted set and a CPU may run the old first word with the
 * new second one; this variant exists to show that contrast.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ftrace.h"

#define INSN_NOP 0xd503201fu
#define INSN_MOV_X9_X30 0xaa1e03e9u
#define INSN_BTI_C 0xd503245fu

extern const unsigned long __start_mcount_loc[], __stop_mcount_loc[];
extern void ftrace_caller(void);

#ifdef FTRACE_NAIVE
#define SLOT_OFFSET 4 /* the record is the first NOP; the slot follows it */
#else
#define SLOT_OFFSET 0 /* ftpatch moved the record to the slot */
#endif

static unsigned long *slots;  /* sorted BL slot addresses */
static const char **layouts;
static unsigned long *counts; /* per site, relaxed atomics */
static size_t nr_sites;
static unsigned long nr_stores, bad_calls, first_bad_slot, first_bad_parent;

static int cmp_ulong(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;

	return x < y ? -1 : x > y;
}

static uint32_t word(unsigned long addr)
{
	return __atomic_load_n((const uint32_t *)addr, __ATOMIC_RELAXED);
}

static uint32_t bl_insn(unsigned long pc, unsigned long target)
{
	long off = (long)target - (long)pc;

	if (off >= (1L << 27) || off < -(1L << 27) || (off & 3)) {
		fprintf(stderr, "minikernel: ftrace_caller out of BL range of %#lx\n", pc);
		abort();
	}
	return 0x94000000u | (((uint32_t)(off >> 2)) & 0x03ffffffu);
}

/* The one way text changes: an aligned single-copy-atomic 32-bit store,
 * then cache maintenance for that word (DC CVAU, DSB ISH, IC IVAU, DSB ISH,
 * ISB on real hardware). */
static void patch_word(unsigned long addr, uint32_t insn)
{
	__atomic_store_n((uint32_t *)addr, insn, __ATOMIC_RELAXED);
	__builtin___clear_cache((char *)addr, (char *)addr + 4);
	__atomic_fetch_add(&nr_stores, 1, __ATOMIC_RELAXED);
}

int ftrace_init(void)
{
	size_t n = (size_t)(__stop_mcount_loc - __start_mcount_loc);
	unsigned long lo = ~0ul, hi = 0, page = (unsigned long)sysconf(_SC_PAGESIZE);

	slots = calloc(n ? n : 1, sizeof(*slots));
	layouts = calloc(n ? n : 1, sizeof(*layouts));
	counts = calloc(n ? n : 1, sizeof(*counts));
	if (!slots || !layouts || !counts)
		return -1;
	for (size_t i = 0; i < n; i++)
		slots[i] = __start_mcount_loc[i] + SLOT_OFFSET;
	qsort(slots, n, sizeof(*slots), cmp_ulong);
	for (size_t i = 0; i < n; i++) {
		unsigned long s = slots[i];
#ifdef FTRACE_NAIVE
		int ok = word(s - 4) == INSN_NOP && word(s) == INSN_NOP;
#else
		/* What a kernel built with ftpatch checks instead of writing
		 * the MOV at boot (ftrace_init_nop). */
		int ok = word(s - 4) == INSN_MOV_X9_X30 && word(s) == INSN_NOP;
#endif
		if (!ok) {
			fprintf(stderr, "minikernel: bad site %#lx: %08x %08x\n", s - 4,
				word(s - 4), word(s));
			return -1;
		}
		layouts[i] = word(s - 8) == INSN_BTI_C ? "bti" : "plain";
		lo = s - 4 < lo ? s - 4 : lo;
		hi = s + 4 > hi ? s + 4 : hi;
	}
	nr_sites = n;
	if (!n)
		return 0;
	/* Writable text, like the kernel's text_poke through a fixmap alias;
	 * qemu-user and Linux both allow RWX private mappings. */
	lo &= ~(page - 1);
	hi = (hi + page - 1) & ~(page - 1);
	if (mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE | PROT_EXEC)) {
		perror("minikernel: mprotect");
		return -1;
	}
	return 0;
}

size_t ftrace_nr_sites(void)
{
	return nr_sites;
}

unsigned long ftrace_site_addr(size_t site)
{
	return slots[site];
}

const char *ftrace_site_layout(size_t site)
{
	return layouts[site];
}

static long find_site(unsigned long slot)
{
	size_t lo = 0, hi = nr_sites;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (slots[mid] < slot)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < nr_sites && slots[lo] == slot ? (long)lo : -1;
}

long ftrace_site_of(const void *fn)
{
	unsigned long f = (unsigned long)fn;

	for (size_t i = 0; i < nr_sites; i++)
		if (slots[i] >= f && slots[i] < f + 16)
			return (long)i;
	return -1;
}

void ftrace_enable_all(void)
{
	unsigned long target = (unsigned long)ftrace_caller;

	for (size_t i = 0; i < nr_sites; i++) {
#ifdef FTRACE_NAIVE
		patch_word(slots[i] - 4, INSN_MOV_X9_X30);
#endif
		patch_word(slots[i], bl_insn(slots[i], target));
	}
}

void ftrace_disable_all(void)
{
	for (size_t i = 0; i < nr_sites; i++) {
		patch_word(slots[i], INSN_NOP);
#ifdef FTRACE_NAIVE
		patch_word(slots[i] - 4, INSN_NOP);
#endif
	}
}

unsigned long ftrace_nr_stores(void)
{
	return __atomic_load_n(&nr_stores, __ATOMIC_RELAXED);
}

unsigned long ftrace_count(size_t site)
{
	return __atomic_load_n(&counts[site], __ATOMIC_RELAXED);
}

unsigned long ftrace_total(void)
{
	unsigned long t = 0;

	for (size_t i = 0; i < nr_sites; i++)
		t += ftrace_count(i);
	return t;
}

unsigned long ftrace_bad_calls(void)
{
	return __atomic_load_n(&bad_calls, __ATOMIC_RELAXED);
}

void ftrace_first_bad(unsigned long *slot, unsigned long *parent)
{
	*slot = __atomic_load_n(&first_bad_slot, __ATOMIC_RELAXED);
	*parent = __atomic_load_n(&first_bad_parent, __ATOMIC_RELAXED);
}

/*
 * Is ra a return address of a call to the function whose BL slot is slot?
 * The word before it must be a BLR, or a BL to that function's entry (the
 * traced functions here make no tail calls).  A stale X9 (a torn site: the
 * old first word, the new BL) is usually the return address of the previous
 * traced call, which this catches unless it was a call to the same function.
 */
static int is_return_from(unsigned long ra, unsigned long slot)
{
	extern const char __executable_start[], etext[];
	unsigned long entry = slot - 4, bl;
	uint32_t insn;

	if (ra & 3 || ra < (unsigned long)__executable_start + 4 || ra > (unsigned long)etext)
		return 0;
	insn = word(ra - 4);
	if ((insn & 0xfffffc1fu) == 0xd63f0000u) /* BLR */
		return 1;
	if ((insn & 0xfc000000u) != 0x94000000u) /* BL */
		return 0;
	bl = ra - 4 + (unsigned long)((long)((int32_t)(insn << 6) >> 6) * 4);
	if (word(entry - 4) == INSN_BTI_C)
		return bl == entry || bl == entry - 4;
	return bl == entry;
}

void ftrace_tracer(unsigned long slot, unsigned long parent)
{
	long site = find_site(slot);

	if (site < 0 || !is_return_from(parent, slot)) {
		if (__atomic_fetch_add(&bad_calls, 1, __ATOMIC_RELAXED) == 0) {
			__atomic_store_n(&first_bad_slot, slot, __ATOMIC_RELAXED);
			__atomic_store_n(&first_bad_parent, parent, __ATOMIC_RELAXED);
		}
		return;
	}
	__atomic_fetch_add(&counts[site], 1, __ATOMIC_RELAXED);
}
