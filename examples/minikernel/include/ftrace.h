/* The minikernel's ftrace runtime (runtime/ftrace.c, runtime/entry.S). */
#ifndef MINIKERNEL_FTRACE_H
#define MINIKERNEL_FTRACE_H

#include <stddef.h>

/* Check every site (rewritten: mov x9, x30 ; nop at the record; naive:
 * nop ; nop), sort the sites, make their text writable.  Prints and returns
 * -1 on a bad site. */
int ftrace_init(void);
size_t ftrace_nr_sites(void);
/* The site of the function at fn: the first site in [fn, fn + 16). -1 if none. */
long ftrace_site_of(const void *fn);
unsigned long ftrace_site_addr(size_t site); /* the site's BL slot */
const char *ftrace_site_layout(size_t site); /* "plain" or "bti" */

void ftrace_enable_all(void);
void ftrace_disable_all(void);
/* Single 32-bit stores done so far (naive: two per site and switch). */
unsigned long ftrace_nr_stores(void);

/* Counts kept by the tracer (relaxed atomics). */
unsigned long ftrace_count(size_t site);
unsigned long ftrace_total(void);
/* Tracer calls whose X9 (the traced function's return address) is not the
 * return address of a call to that function, or whose slot is no known site:
 * a torn patch site. */
unsigned long ftrace_bad_calls(void);
/* The first bad call: slot and X9 seen. */
void ftrace_first_bad(unsigned long *slot, unsigned long *parent);

/* Called by ftrace_caller (entry.S) with the BL slot and X9. */
void ftrace_tracer(unsigned long slot, unsigned long parent);

#endif
