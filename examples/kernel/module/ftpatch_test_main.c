// SPDX-License-Identifier: GPL-2.0
/*
 * Test module for ftpatch's module checks (scripts/kernel-e2e.sh): traced
 * functions of every kind a module has (global, static, __init, weak and
 * its override, one called only through a pointer), and a kernel thread
 * that calls them in a loop so that they run on another CPU while the
 * tracer switches their BL slots.
 */
#include <linux/compiler.h>
#include <linux/delay.h>
#include <linux/init.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/sched.h>

int ftpatch_test_weak(int x);		/* ftpatch_test_weak.c, overridden */
int ftpatch_test_weak_kept(int x);	/* ftpatch_test_weak.c, not overridden */
int ftpatch_test_global(int x);

static struct task_struct *ftpatch_test_thread;
static unsigned long ftpatch_test_calls;

/*
 * Where ftpatch_test_init_fn() was: the init reads it here, since the
 * module's __init symbols are gone from kallsyms once it has loaded, to
 * tell whether calls from the module's init text reach ftrace_caller
 * directly or through the init text's ftrace PLT.
 */
static unsigned long init_text;
module_param(init_text, ulong, 0444);
MODULE_PARM_DESC(init_text, "address of ftpatch_test_init_fn (read only)");

/* The strong definition that overrides the weak one of ftpatch_test_weak.c. */
noinline int ftpatch_test_weak(int x)
{
	return x + 3;
}

noinline int ftpatch_test_global(int x)
{
	return ftpatch_test_weak(x) ^ ftpatch_test_weak_kept(x);
}

static noinline int ftpatch_test_static(int x)
{
	barrier();
	return ftpatch_test_global(x) + 1;
}

/* Only reached through a pointer: an indirect call (BTI C with BTI). */
static noinline int ftpatch_test_indirect(int x)
{
	return ftpatch_test_static(x) * 2;
}

static int (*volatile ftpatch_test_fn)(int) = ftpatch_test_indirect;

static int ftpatch_test_loop(void *unused)
{
	/* Let the init stop its trace before this thread's calls fill it. */
	msleep(100);
	while (!kthread_should_stop()) {
		WRITE_ONCE(ftpatch_test_calls,
			   ftpatch_test_calls + (ftpatch_test_fn(1) & 1) + 1);
		if ((ftpatch_test_calls & 1023) == 0)
			usleep_range(100, 200);
		cond_resched();
	}
	return 0;
}

static noinline int __init ftpatch_test_init_fn(void)
{
	return ftpatch_test_static(2);
}

static int __init ftpatch_test_init(void)
{
	init_text = (unsigned long)ftpatch_test_init_fn;
	pr_info("ftpatch_test: loaded, init fn gives %d\n", ftpatch_test_init_fn());
	ftpatch_test_thread = kthread_run(ftpatch_test_loop, NULL, "ftpatch_test");
	return PTR_ERR_OR_ZERO(ftpatch_test_thread);
}

static void __exit ftpatch_test_exit(void)
{
	kthread_stop(ftpatch_test_thread);
	pr_info("ftpatch_test: unloaded after %lu calls\n", ftpatch_test_calls);
}

module_init(ftpatch_test_init);
module_exit(ftpatch_test_exit);
MODULE_DESCRIPTION("ftpatch: functions to trace in a module");
MODULE_LICENSE("GPL");
