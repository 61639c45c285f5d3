/* Traced: a struct returned through X8, and calls through a pointer. */
#include "traced.h"

__attribute__((noinline)) struct big make_big(long seed)
{
	struct big b;

	for (int i = 0; i < 6; i++)
		b.v[i] = seed * (i + 1) + i;
	return b;
}

__attribute__((noinline)) long dot(const struct big *a, const struct big *b)
{
	long s = 0;

	for (int i = 0; i < 6; i++)
		s += a->v[i] * b->v[i];
	return s;
}

__attribute__((noinline)) long square(long x)
{
	return x * x;
}

__attribute__((noinline)) long apply(long (*fn)(long), long x)
{
	return fn(x) + 1;
}
