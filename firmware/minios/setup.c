/*
 * arch_init: the first C code, entered from _start with start_info. As Mini-OS's arch/x86/setup.c: say
 * hello on the emergency console, keep a copy of start_info, install the trap table and callbacks, reset
 * the FPU/SSE state, learn the memory layout, find the console and xenstore rings, map shared_info over
 * the placeholder page, print the start-of-day banner, and go to start_kernel.
 */
#include "minios.h"

struct shared_info *HYPERVISOR_shared_info;
struct start_info start_info;
char cmdline[MAX_CMDLINE_SIZE];
char stack[2 * STACK_SIZE] __attribute__((aligned(16)));   /* the boot stack (x86_64.S) */
extern char shared_info[PAGE_SIZE];                        /* the placeholder page (x86_64.S) */

static inline void fpu_init(void) { __asm__ volatile("fninit"); }

static inline void sse_init(void)
{
    uint32_t mxcsr = 0x1f80;            /* every SSE exception masked, round to nearest */
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
}

/* Point the placeholder page's PTE at the shared_info frame (a machine address in start_info). */
static struct shared_info *map_shared_info(unsigned long pa)
{
    long rc = HYPERVISOR_update_va_mapping((unsigned long)shared_info, pa | 7, UVMF_INVLPG);
    if (rc) {
        xprintk("Failed to map shared_info!! rc=%ld\n", rc);
        do_exit();
    }
    return (struct shared_info *)shared_info;
}

static void print_start_of_day(struct start_info *si, void *si_va)
{
    printk("Xen Minimal OS!\n");
    printk("  start_info: %p(VA)\n", si_va);
    printk("    nr_pages: 0x%lx\n", si->nr_pages);
    printk("  shared_inf: 0x%08lx(MA)\n", si->shared_info);
    printk("     pt_base: %p(VA)\n", (void *)si->pt_base);
    printk("nr_pt_frames: 0x%lx\n", si->nr_pt_frames);
    printk("    mfn_list: %p(VA)\n", (void *)si->mfn_list);
    printk("   mod_start: 0x%lx(VA)\n", si->mod_start);
    printk("     mod_len: %lu\n", si->mod_len);
    printk("       flags: 0x%x\n", (unsigned int)si->flags);
    printk("    cmd_line: %s\n", cmdline);
    printk("       stack: %p-%p\n", (void *)stack, (void *)(stack + sizeof(stack)));
}

void arch_init(struct start_info *si)
{
    static const char hello[] = "Bootstrapping...\n";

    (void)HYPERVISOR_console_io(CONSOLEIO_write, sizeof(hello) - 1, hello);
    /* Keep our own copy: the page Xen put it in is just free memory to us from now on. */
    memcpy(&start_info, si, sizeof(start_info));
    trap_init();
    fpu_init();
    sse_init();
    arch_mm_preinit(&start_info);
    get_console(&start_info);
    get_xenbus(&start_info);
    memcpy(cmdline, start_info.cmd_line, MAX_CMDLINE_SIZE - 1);
    cmdline[MAX_CMDLINE_SIZE - 1] = 0;
    HYPERVISOR_shared_info = map_shared_info(start_info.shared_info);
    print_start_of_day(&start_info, si);
    start_kernel();
}

/* "key=value" from the command line ("key" alone gives ""), or NULL. */
const char *cmdline_value(const char *key)
{
    static char value[64];
    size_t klen = strlen(key);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *word = p;
        while (*p && *p != ' ')
            p++;
        if ((size_t)(p - word) >= klen && !strncmp(word, key, klen) &&
            (word[klen] == '=' || word + klen == p)) {
            const char *v = word[klen] == '=' ? word + klen + 1 : p;
            size_t n = (size_t)(p - v) < sizeof(value) - 1 ? (size_t)(p - v) : sizeof(value) - 1;
            memcpy(value, v, n);
            value[n] = 0;
            return value;
        }
    }
    return NULL;
}
