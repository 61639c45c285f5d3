// SPDX-License-Identifier: GPL-2.0
/*
 * Weak definitions for ftpatch_test.ko: ftpatch_test_weak() is overridden by
 * ftpatch_test_main.c (its code and patch-site record stay in the module
 * without a symbol once linked), ftpatch_test_weak_kept() is not.
 */
#include <linux/compiler.h>

int ftpatch_test_weak(int x);
int ftpatch_test_weak_kept(int x);

__weak noinline int ftpatch_test_weak(int x)
{
	return x - 3;
}

__weak noinline int ftpatch_test_weak_kept(int x)
{
	return x << 1;
}
