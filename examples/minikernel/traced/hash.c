/* Traced: byte hashing, and a static function only called directly
 * (GCC gives it no BTI C under -mbranch-protection, so one object mixes
 * both entry layouts). */
#include "traced.h"

__attribute__((noinline)) uint32_t fnv1a(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint32_t h = 2166136261u;

	while (n--)
		h = (h ^ *s++) * 16777619u;
	return h;
}

__attribute__((noinline)) static uint32_t mix(uint32_t h, uint32_t v)
{
	h ^= v;
	h *= 0x9e3779b1u;
	return h ^ (h >> 15);
}

__attribute__((noinline)) uint32_t hash_words(const uint32_t *w, int n)
{
	uint32_t h = (uint32_t)n;

	for (int i = 0; i < n; i++)
		h = mix(h, w[i]);
	return h;
}
