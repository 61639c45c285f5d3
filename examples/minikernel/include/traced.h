/* The traced functions (the files in traced/, built with -fpatchable-function-entry=2). */
#ifndef MINIKERNEL_TRACED_H
#define MINIKERNEL_TRACED_H

#include <stddef.h>
#include <stdint.h>

/* traced/arith.c */
long fib(int n);                       /* recursive: fib_calls(n) entries */
unsigned long gcd(unsigned long a, unsigned long b);
long sum10(long a, long b, long c, long d, long e, long f, long g, long h,
	   long i, long j);            /* eight register and two stack arguments */
double poly(double x, double a, double b, double c, double d); /* FP arguments */

/* traced/hash.c */
uint32_t fnv1a(const void *p, size_t n);
uint32_t hash_words(const uint32_t *w, int n); /* calls the static mix() n times */

/* traced/vec.c */
struct big {
	long v[6];
};
struct big make_big(long seed);       /* returned through the X8 buffer */
long dot(const struct big *a, const struct big *b);
long square(long x);                  /* only called through a pointer */
long apply(long (*fn)(long), long x); /* calls fn once */

#endif
