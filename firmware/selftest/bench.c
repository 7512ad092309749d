/* Workloads for tools/bench.py: a compute loop (its machine code is also run on bare Unicorn as the
 * baseline), no-op hypercalls, and exception round trips (int3 -> handler -> back). */
#include "selftest.h"

extern void int3_native_entry(void);
extern void int3_hypercall_entry(void);
unsigned long int3_count;

/* A mix of ALU work and memory traffic over a 4 KiB buffer. Kept in its own function with a simple
 * calling convention (rdi = iterations, rsi = buffer) so tools/bench.py can run the same bytes bare. */
__attribute__((noinline, used)) unsigned long bench_loop(unsigned long n, unsigned long *buf)
{
    unsigned long acc = 0x12345678;
    for (unsigned long i = 0; i < n; i++) {
        acc = acc * 6364136223846793005UL + 1442695040888963407UL;
        buf[i & 511] += acc >> 7;
        acc ^= buf[(i * 7) & 511];
    }
    return acc;
}

static unsigned long scratch[512];

void run_bench(const char *what, unsigned long n)
{
    if (!strcmp(what, "loop")) {
        printk("bench: loop %lu -> %lx\n", n, bench_loop(n, scratch));
    } else if (!strcmp(what, "hypercalls")) {
        for (unsigned long i = 0; i < n; i++)
            HYPERVISOR_xen_version(XENVER_version, 0);
        printk("bench: %lu hypercalls\n", n);
    } else if (!strcmp(what, "int3") || !strcmp(what, "int3iret")) {
        struct trap_info traps[] = {
            { 3, 3, FLAT_KERNEL_CS,
              (unsigned long)(what[4] ? int3_hypercall_entry : int3_native_entry) },
            { 0, 0, 0, 0 },
        };
        HYPERVISOR_set_trap_table(traps);
        for (unsigned long i = 0; i < n; i++)
            __asm__ volatile("int3" ::: "memory");
        printk("bench: %lu int3 round trips, %lu handled\n", n, int3_count);
    }
}
