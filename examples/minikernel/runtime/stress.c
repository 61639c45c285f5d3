/*
 * The minikernel stress test: worker threads call the traced functions in
 * tight loops and check every result, while a patcher thread switches every
 * site on and off thousands of times.  Built without
 * -fpatchable-function-entry: only the files in traced/ are traced.
 *
 * Phases (workers are joined between phases, so each phase starts quiesced):
 *   enabled     all sites on: every call is traced, exactly
 *   disabled    all sites off: no call is traced
 *   stress      the patcher switches all sites on/off CYCLES times while the
 *               workers run: every result right, traced <= calls
 *   quiesced    after the final disable: no call is traced
 *   re-enabled  all sites on again: every call is traced, exactly
 * A wrong result, a tracer call with a bad X9 (a torn site), a crash or the
 * watchdog prints "minikernel: FAIL ..." and exits non-zero; the last line
 * of a good run is "minikernel: PASS ...".
 *
 * Usage: stress [-c CYCLES] [-w WORKERS] [-n ITERS] [-s SECONDS] [-T WATCHDOG]
 *   -c  on/off cycles of the patcher (default 2000)
 *   -w  worker threads (default 3)
 *   -n  iterations per worker in the fixed phases (default 300)
 *   -s  stop the stress phase early after SECONDS (default 0: never)
 *   -T  watchdog: fail after this many seconds in all (default 55)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "ftrace.h"
#include "traced.h"

#ifdef FTRACE_NAIVE
#define VARIANT "naive-two-word"
#else
#define VARIANT "single-word"
#endif

enum fn { F_FIB, F_GCD, F_SUM10, F_POLY, F_FNV1A, F_HASH_WORDS, F_MIX, F_MAKE_BIG, F_DOT,
	  F_SQUARE, F_APPLY, NR_FN };
static const char *const fn_name[NR_FN] = {
	"fib", "gcd", "sum10", "poly", "fnv1a", "hash_words", "mix", "make_big", "dot",
	"square", "apply",
};
static void *const fn_addr[NR_FN] = {
	(void *)fib, (void *)gcd, (void *)sum10, (void *)poly, (void *)fnv1a,
	(void *)hash_words, NULL /* static in hash.c: the one site left over */,
	(void *)make_big, (void *)dot, (void *)square, (void *)apply,
};
static long fn_site[NR_FN];

/* ---- inputs and independently computed expected results ---- */

#define NR_CASES 16
struct kase {
	int fib_n;
	long fib;
	unsigned long ga, gb, gcd;
	long s[10], sum10;
	double x, pa, pb, pc, pd, poly;
	char text[32];
	size_t text_len;
	uint32_t fnv;
	uint32_t words[8];
	int nwords;
	uint32_t hw;
	long seed1, seed2;
	struct big big1;
	long dot;
	long sq_arg, applied;
	unsigned long calls[NR_FN]; /* traced-function entries per iteration */
};
static struct kase cases[NR_CASES];

static long ref_fib(int n)
{
	long a = 0, b = 1;

	while (n--) {
		long t = a + b;

		a = b;
		b = t;
	}
	return a;
}

static unsigned long fib_entries(int n)
{
	return n < 2 ? 1 : 1 + fib_entries(n - 1) + fib_entries(n - 2);
}

static unsigned long ref_gcd(unsigned long a, unsigned long b)
{
	while (a != b) {
		if (a > b)
			a -= b;
		else
			b -= a;
	}
	return a;
}

static uint32_t ref_mix(uint32_t h, uint32_t v)
{
	h = (h ^ v) * 0x9e3779b1u;
	return h ^ (h >> 15);
}

static void make_cases(void)
{
	for (int k = 0; k < NR_CASES; k++) {
		struct kase *c = &cases[k];

		memset(c, 0, sizeof(*c));
		c->fib_n = 4 + k % 7;
		c->fib = ref_fib(c->fib_n);
		c->ga = 1071ul * (k + 2) * 3;
		c->gb = 462ul * (k + 5);
		c->gcd = ref_gcd(c->ga, c->gb);
		c->sum10 = 0;
		for (int i = 0; i < 10; i++) {
			c->s[i] = (long)k * 1000 - 37 * i;
			c->sum10 += (i + 1) * c->s[i];
		}
		c->x = k - 7;
		c->pa = 3;
		c->pb = -k;
		c->pc = 11;
		c->pd = 2 * k + 1;
		/* Horner by hand; integer values, so every rounding is exact. */
		c->poly = c->pa * c->x * c->x * c->x + c->pb * c->x * c->x + c->pc * c->x + c->pd;
		c->text_len = (size_t)snprintf(c->text, sizeof(c->text), "minikernel case %d", k);
		c->fnv = 2166136261u;
		for (size_t i = 0; i < c->text_len; i++)
			c->fnv = (c->fnv ^ (unsigned char)c->text[i]) * 16777619u;
		c->nwords = 1 + k % 8;
		c->hw = (uint32_t)c->nwords;
		for (int i = 0; i < c->nwords; i++) {
			c->words[i] = 0x01000193u * (uint32_t)(k + 1) + (uint32_t)i * 0x7feb352du;
			c->hw = ref_mix(c->hw, c->words[i]);
		}
		c->seed1 = 7L * k - 20;
		c->seed2 = k + 1;
		c->dot = 0;
		for (int i = 0; i < 6; i++) {
			c->big1.v[i] = c->seed1 * (i + 1) + i;
			c->dot += c->big1.v[i] * (c->seed2 * (i + 1) + i);
		}
		c->sq_arg = k - 8;
		c->applied = c->sq_arg * c->sq_arg + 1;

		c->calls[F_FIB] = fib_entries(c->fib_n);
		c->calls[F_GCD] = c->calls[F_SUM10] = c->calls[F_POLY] = 1;
		c->calls[F_FNV1A] = c->calls[F_HASH_WORDS] = 1;
		c->calls[F_MIX] = (unsigned long)c->nwords;
		c->calls[F_MAKE_BIG] = 2;
		c->calls[F_DOT] = c->calls[F_SQUARE] = c->calls[F_APPLY] = 1;
	}
}

/* ---- workers ---- */

struct worker {
	pthread_t thread;
	int id;
	unsigned long iters; /* 0: run until stop */
	unsigned long done;
	unsigned long calls[NR_FN];
	unsigned long errors;
	char first_error[160];
};

static int stop_workers;
static pthread_barrier_t start_barrier;

static void fail_result(struct worker *w, int k, const char *what)
{
	if (w->errors++ == 0)
		snprintf(w->first_error, sizeof(w->first_error),
			 "worker %d iteration %lu case %d: %s wrong", w->id, w->done, k, what);
}

#define CHECK(cond, what)                                                                 \
	do {                                                                              \
		if (!(cond))                                                              \
			fail_result(w, k, what);                                          \
	} while (0)

/* The pointer apply() calls, read through a volatile so the call stays an
 * indirect BLR into square()'s BTI C landing pad. */
static long (*volatile square_ptr)(long) = square;

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(&start_barrier);
	for (unsigned long i = 0;; i++) {
		int k = (int)((i + (unsigned long)w->id * 5) % NR_CASES);
		const struct kase *c = &cases[k];
		struct big b1, b2;

		if (w->iters ? i >= w->iters : __atomic_load_n(&stop_workers, __ATOMIC_RELAXED))
			break;
		CHECK(fib(c->fib_n) == c->fib, "fib");
		CHECK(gcd(c->ga, c->gb) == c->gcd, "gcd");
		CHECK(sum10(c->s[0], c->s[1], c->s[2], c->s[3], c->s[4], c->s[5], c->s[6],
			    c->s[7], c->s[8], c->s[9]) == c->sum10,
		      "sum10");
		CHECK(poly(c->x, c->pa, c->pb, c->pc, c->pd) == c->poly, "poly");
		CHECK(fnv1a(c->text, c->text_len) == c->fnv, "fnv1a");
		CHECK(hash_words(c->words, c->nwords) == c->hw, "hash_words");
		b1 = make_big(c->seed1);
		b2 = make_big(c->seed2);
		CHECK(memcmp(&b1, &c->big1, sizeof(b1)) == 0, "make_big");
		CHECK(dot(&b1, &b2) == c->dot, "dot");
		CHECK(apply(square_ptr, c->sq_arg) == c->applied, "apply");
		for (int f = 0; f < NR_FN; f++)
			w->calls[f] += c->calls[f];
		w->done++;
	}
	return NULL;
}

/* ---- patcher ---- */

struct patcher {
	pthread_t thread;
	unsigned long cycles, done;
	double max_seconds;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void dwell(void)
{
	for (volatile int i = 0; i < 2000; i++)
		;
}

static void *patcher_main(void *arg)
{
	struct patcher *p = arg;
	double t0;

	pthread_barrier_wait(&start_barrier);
	t0 = now();
	for (p->done = 0; p->done < p->cycles; p->done++) {
		if (p->max_seconds > 0 && (p->done & 15) == 0 && now() - t0 > p->max_seconds)
			break;
		ftrace_enable_all();
		dwell();
		ftrace_disable_all();
		dwell();
	}
	return NULL;
}

/* ---- phases ---- */

static unsigned long total_calls[NR_FN], total_traced[NR_FN];
static unsigned long nr_errors;

struct phase_result {
	unsigned long calls[NR_FN], traced[NR_FN], calls_sum, traced_sum, iterations;
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	printf("minikernel: FAIL ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(1);
}

static void run_phase(const char *name, int nworkers, unsigned long iters, struct patcher *p,
		      struct phase_result *r)
{
	struct worker *ws = calloc((size_t)nworkers, sizeof(*ws));
	unsigned long before[NR_FN];

	if (!ws)
		die("out of memory");
	memset(r, 0, sizeof(*r));
	for (int f = 0; f < NR_FN; f++)
		before[f] = ftrace_count((size_t)fn_site[f]);
	__atomic_store_n(&stop_workers, 0, __ATOMIC_RELAXED);
	pthread_barrier_init(&start_barrier, NULL, (unsigned)nworkers + (p ? 1 : 0));
	for (int i = 0; i < nworkers; i++) {
		ws[i].id = i;
		ws[i].iters = iters;
		if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]))
			die("pthread_create");
	}
	if (p) {
		if (pthread_create(&p->thread, NULL, patcher_main, p))
			die("pthread_create");
		pthread_join(p->thread, NULL);
		__atomic_store_n(&stop_workers, 1, __ATOMIC_RELAXED);
	}
	for (int i = 0; i < nworkers; i++) {
		pthread_join(ws[i].thread, NULL);
		r->iterations += ws[i].done;
		for (int f = 0; f < NR_FN; f++)
			r->calls[f] += ws[i].calls[f];
		if (ws[i].errors) {
			nr_errors += ws[i].errors;
			printf("minikernel: %s: %lu wrong results, first: %s\n", name, ws[i].errors,
			       ws[i].first_error);
		}
	}
	pthread_barrier_destroy(&start_barrier);
	for (int f = 0; f < NR_FN; f++) {
		r->traced[f] = ftrace_count((size_t)fn_site[f]) - before[f];
		r->calls_sum += r->calls[f];
		r->traced_sum += r->traced[f];
		total_calls[f] += r->calls[f];
		total_traced[f] += r->traced[f];
	}
	printf("phase %s: iterations=%lu calls=%lu traced=%lu\n", name, r->iterations,
	       r->calls_sum, r->traced_sum);
	fflush(stdout);
	free(ws);
}

static void expect_all_traced(const char *name, const struct phase_result *r)
{
	for (int f = 0; f < NR_FN; f++)
		if (r->traced[f] != r->calls[f])
			die("%s: %s called %lu times, traced %lu", name, fn_name[f], r->calls[f],
			    r->traced[f]);
}

static void expect_none_traced(const char *name, const struct phase_result *r)
{
	for (int f = 0; f < NR_FN; f++)
		if (r->traced[f])
			die("%s: %s traced %lu times while disabled", name, fn_name[f],
			    r->traced[f]);
}

/* ---- crashes and the watchdog ---- */

static void put_hex(char **p, unsigned long v)
{
	char tmp[16];
	int n = 0;

	*(*p)++ = '0';
	*(*p)++ = 'x';
	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	while (n)
		*(*p)++ = tmp[--n];
}

static void put_str(char **p, const char *s)
{
	while (*s)
		*(*p)++ = *s++;
}

static void on_signal(int sig, siginfo_t *si, void *uc_)
{
	ucontext_t *uc = uc_;
	char buf[256], *p = buf;
	unsigned long slot, parent;

	put_str(&p, "\nminikernel: FAIL ");
	if (sig == SIGALRM) {
		put_str(&p, "watchdog: still running");
	} else {
		put_str(&p, sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS"
			    : sig == SIGILL ? "SIGILL" : "SIGTRAP");
		put_str(&p, " pc=");
		put_hex(&p, (unsigned long)uc->uc_mcontext.pc);
		put_str(&p, " addr=");
		put_hex(&p, (unsigned long)si->si_addr);
		put_str(&p, " x30=");
		put_hex(&p, (unsigned long)uc->uc_mcontext.regs[30]);
		put_str(&p, " x9=");
		put_hex(&p, (unsigned long)uc->uc_mcontext.regs[9]);
	}
	put_str(&p, " bad_calls=");
	put_hex(&p, ftrace_bad_calls());
	ftrace_first_bad(&slot, &parent);
	if (ftrace_bad_calls()) {
		put_str(&p, " first_bad_slot=");
		put_hex(&p, slot);
		put_str(&p, " x9=");
		put_hex(&p, parent);
	}
	put_str(&p, "\n");
	fflush(stdout);
	if (write(1, buf, (size_t)(p - buf)) < 0)
		_exit(4);
	_exit(3);
}

static void install_handlers(unsigned watchdog)
{
	struct sigaction sa;
	static char altstack[65536];
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };

	sigaltstack(&ss, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGTRAP, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	alarm(watchdog);
}

int main(int argc, char **argv)
{
	unsigned long cycles = 2000, iters = 300;
	int nworkers = 3, opt;
	unsigned watchdog = 55;
	double max_seconds = 0, t0, t_stress;
	struct phase_result r;
	struct patcher p;
	size_t nbti = 0;
	unsigned long stores0;

	while ((opt = getopt(argc, argv, "c:w:n:s:T:")) != -1) {
		switch (opt) {
		case 'c': cycles = strtoul(optarg, NULL, 0); break;
		case 'w': nworkers = atoi(optarg); break;
		case 'n': iters = strtoul(optarg, NULL, 0); break;
		case 's': max_seconds = atof(optarg); break;
		case 'T': watchdog = (unsigned)atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-c CYCLES] [-w WORKERS] [-n ITERS] [-s SECONDS] "
					"[-T WATCHDOG]\n", argv[0]);
			return 2;
		}
	}
	if (nworkers < 1)
		nworkers = 1;
	install_handlers(watchdog);
	t0 = now();
	make_cases();
	if (ftrace_init())
		die("ftrace_init");

	/* Name the sites: one per traced function, mix() is the one left. */
	if (ftrace_nr_sites() != NR_FN)
		die("%zu sites, expected %d", ftrace_nr_sites(), NR_FN);
	for (int f = 0; f < NR_FN; f++) {
		fn_site[f] = fn_addr[f] ? ftrace_site_of(fn_addr[f]) : -1;
		if (fn_addr[f] && fn_site[f] < 0)
			die("no site for %s", fn_name[f]);
	}
	for (size_t s = 0; s < NR_FN; s++) {
		int claimed = 0;

		for (int f = 0; f < NR_FN; f++)
			claimed |= fn_site[f] == (long)s;
		if (!claimed)
			fn_site[F_MIX] = (long)s;
		nbti += strcmp(ftrace_site_layout(s), "bti") == 0;
	}
	printf("minikernel: variant=%s sites=%zu plain=%zu bti=%zu workers=%d\n", VARIANT,
	       ftrace_nr_sites(), ftrace_nr_sites() - nbti, nbti, nworkers);
	for (int f = 0; f < NR_FN; f++)
		printf("site %s: slot=%#lx layout=%s\n", fn_name[f],
		       ftrace_site_addr((size_t)fn_site[f]), ftrace_site_layout((size_t)fn_site[f]));
	fflush(stdout);

	ftrace_enable_all();
	run_phase("enabled", nworkers, iters, NULL, &r);
	expect_all_traced("enabled", &r);

	ftrace_disable_all();
	run_phase("disabled", nworkers, iters, NULL, &r);
	expect_none_traced("disabled", &r);

	p.cycles = cycles;
	p.max_seconds = max_seconds;
	stores0 = ftrace_nr_stores();
	t_stress = now();
	run_phase("stress", nworkers, 0, &p, &r);
	t_stress = now() - t_stress;
	printf("phase stress: cycles=%lu stores=%lu seconds=%.2f\n", p.done,
	       ftrace_nr_stores() - stores0, t_stress);
	for (int f = 0; f < NR_FN; f++)
		if (r.traced[f] > r.calls[f])
			die("stress: %s traced %lu times, called %lu", fn_name[f], r.traced[f],
			    r.calls[f]);
	if (ftrace_bad_calls() || nr_errors) {
		unsigned long slot, parent;

		ftrace_first_bad(&slot, &parent);
		die("stress: %lu wrong results, %lu tracer calls with a bad X9 (first: slot %#lx "
		    "x9 %#lx)", nr_errors, ftrace_bad_calls(), slot, parent);
	}

	/* The patcher ended with every site disabled and every worker is
	 * joined: nothing may be traced any more. */
	run_phase("quiesced", nworkers, iters, NULL, &r);
	expect_none_traced("quiesced", &r);

	ftrace_enable_all();
	run_phase("re-enabled", nworkers, iters, NULL, &r);
	expect_all_traced("re-enabled", &r);
	ftrace_disable_all();

	if (nr_errors || ftrace_bad_calls())
		die("%lu wrong results, %lu bad tracer calls", nr_errors, ftrace_bad_calls());
	{
		unsigned long calls = 0, traced = 0;

		for (int f = 0; f < NR_FN; f++) {
			printf("count %s: calls=%lu traced=%lu\n", fn_name[f], total_calls[f],
			       total_traced[f]);
			calls += total_calls[f];
			traced += total_traced[f];
		}
		printf("minikernel: PASS variant=%s sites=%zu cycles=%lu stores=%lu calls=%lu "
		       "traced=%lu bad=0 errors=0 seconds=%.2f\n",
		       VARIANT, ftrace_nr_sites(), p.done, ftrace_nr_stores(), calls, traced,
		       now() - t0);
	}
	return 0;
}
