/*
 * ftrace_caller: the trampoline every enabled site branches to.
 *
 * A rewritten site is
 *         func:  [bti c]
 *                mov  x9, x30        // written at build time by ftpatch
 *                bl   ftrace_caller  // the BL slot: nop <-> bl, one word
 *
 * On entry (the contract of arm64 ftrace_caller):
 *   x9  = the traced function's return address (its caller's LR),
 *   x30 = the address after the BL slot,
 *   x0-x7, q0-q7 = the traced function's arguments, x8 = its indirect
 *   result location.  Everything else the traced function may rely on is
 *   callee-saved under AAPCS64, so the C tracer keeps it.
 * We save the argument registers, call ftrace_tracer(slot, x9), restore, and
 * return into the traced function with x30 = x9 again, like the kernel's
 * ftrace_common_return.  The return jumps with RET x10 (as the kernel does
 * with `ret x9`): RET is not checked by BTI, where BR to the instruction after
 * the slot (no landing pad) would fault in a BTI-guarded page.
 */
	.text
	.globl	ftrace_caller
	.type	ftrace_caller, %function
	.p2align 4
ftrace_caller:
	sub	sp, sp, #224
	stp	x0, x1, [sp, #0]
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x29, x30, [sp, #80]
	stp	q0, q1, [sp, #96]
	stp	q2, q3, [sp, #128]
	stp	q4, q5, [sp, #160]
	stp	q6, q7, [sp, #192]
	add	x29, sp, #80		// a frame record, for debuggers

	sub	x0, x30, #4		// the BL slot that brought us here
	mov	x1, x9			// the traced function's return address
	bl	ftrace_tracer

	ldp	q6, q7, [sp, #192]
	ldp	q4, q5, [sp, #160]
	ldp	q2, q3, [sp, #128]
	ldp	q0, q1, [sp, #96]
	ldp	x29, x30, [sp, #80]
	ldp	x8, x9, [sp, #64]
	ldp	x6, x7, [sp, #48]
	ldp	x4, x5, [sp, #32]
	ldp	x2, x3, [sp, #16]
	ldp	x0, x1, [sp, #0]
	add	sp, sp, #224

	mov	x10, x30		// continue after the BL slot
	mov	x30, x9			// with the traced function's own LR back
	ret	x10
	.size	ftrace_caller, . - ftrace_caller

	.section .note.GNU-stack, "", %progbits

#if defined(__ARM_FEATURE_BTI_DEFAULT) || defined(__ARM_FEATURE_PAC_DEFAULT)
/* GNU property note: this object is BTI/PAC compatible (ftrace_caller is
 * only reached by BL, so it needs no landing pad). */
	.pushsection .note.gnu.property, "a"
	.p2align 3
	.word	4			// n_namesz
	.word	16			// n_descsz
	.word	5			// NT_GNU_PROPERTY_TYPE_0
	.asciz	"GNU"
	.word	0xc0000000		// GNU_PROPERTY_AARCH64_FEATURE_1_AND
	.word	4
	.word	3			// BTI | PAC
	.word	0
	.popsection
#endif
