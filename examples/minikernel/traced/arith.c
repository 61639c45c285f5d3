/* Traced: integer recursion, many arguments, floating point arguments. */
#include "traced.h"

__attribute__((noinline)) long fib(int n)
{
	long a, b;

	if (n < 2)
		return n;
	a = fib(n - 1);
	b = fib(n - 2);
	/* The modulo (a no-op for the n used) keeps GCC from turning the second
	 * call into a loop with an accumulator: every fib() is a real call. */
	return (a + b) % 1000003;
}

__attribute__((noinline)) unsigned long gcd(unsigned long a, unsigned long b)
{
	while (b) {
		unsigned long t = a % b;

		a = b;
		b = t;
	}
	return a;
}

__attribute__((noinline)) long sum10(long a, long b, long c, long d, long e, long f,
				     long g, long h, long i, long j)
{
	return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h + 9 * i + 10 * j;
}

__attribute__((noinline)) double poly(double x, double a, double b, double c, double d)
{
	/* Integer-valued operands keep every result exact. */
	return ((a * x + b) * x + c) * x + d;
}
