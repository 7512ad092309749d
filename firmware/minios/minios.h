/*
 * minios: a Mini-OS-shaped PV kernel for miniguest. This header collects what Mini-OS spreads over os.h,
 * hypervisor.h, mm.h, events.h, time.h, sched.h, wait.h and xenbus.h -- the same names and the same
 * behaviour, written for this tree (x86_64 PV only, one vCPU).
 */
#ifndef MINIOS_H
#define MINIOS_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "hypercall.h"
#include "lib.h"
#include "xen.h"

/* -- layout (Mini-OS links at virtual address 0, so physical == virtual for our own pages) ------------- */
#define VIRT_START          0UL
#define STACK_SIZE_PAGE_ORDER 2
#define STACK_SIZE          (PAGE_SIZE << STACK_SIZE_PAGE_ORDER)
#define VIRT_DEMAND_AREA    0x0000008000000000UL      /* L4 slot 1: mappings made at run time */
#define DEMAND_MAP_PAGES    1024UL
#define MAX_CMDLINE_SIZE    1024

#define to_phys(x)          ((unsigned long)(x) - VIRT_START)
#define to_virt(x)          ((void *)((unsigned long)(x) + VIRT_START))
#define PFN_UP(x)           (((x) + PAGE_SIZE - 1) >> PAGE_SHIFT)
#define PFN_DOWN(x)         ((x) >> PAGE_SHIFT)
#define virt_to_pfn(v)      (to_phys(v) >> PAGE_SHIFT)
#define pfn_to_virt(p)      to_virt((unsigned long)(p) << PAGE_SHIFT)
#define machine_to_phys_mapping ((const unsigned long *)MACH2PHYS_VIRT_START)
extern unsigned long *phys_to_machine_mapping;
#define pfn_to_mfn(p)       (phys_to_machine_mapping[(p)])
#define mfn_to_pfn(m)       (machine_to_phys_mapping[(m)])
#define virt_to_mfn(v)      pfn_to_mfn(virt_to_pfn(v))
#define mfn_to_virt(m)      to_virt(mfn_to_pfn(m) << PAGE_SHIFT)
#define virt_to_mach(v)     ((virt_to_mfn(v) << PAGE_SHIFT) | ((unsigned long)(v) & (PAGE_SIZE - 1)))

/* Page-table entries (x86_64 PV: Xen wants USER set at every level; the kernel runs in ring 3). */
typedef uint64_t pgentry_t;
#define _PAGE_PRESENT  0x001UL
#define _PAGE_RW       0x002UL
#define _PAGE_USER     0x004UL
#define _PAGE_ACCESSED 0x020UL
#define _PAGE_DIRTY    0x040UL
#define _PAGE_PSE      0x080UL
#define _PAGE_NX       (1UL << 63)
#define L1_PROT        (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_USER)
#define L1_PROT_RO     (_PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_USER)
#define L2_PROT        (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_USER)
#define L3_PROT        L2_PROT
#define L4_PROT        L2_PROT
#define PTE_MASK       0x000FFFFFFFFFF000UL
#define pte_to_mfn(e)  (((e) & PTE_MASK) >> PAGE_SHIFT)
#define l1_table_offset(va) (((va) >> 12) & 511)
#define l2_table_offset(va) (((va) >> 21) & 511)
#define l3_table_offset(va) (((va) >> 30) & 511)
#define l4_table_offset(va) (((va) >> 39) & 511)
#define L1_FRAME 1
#define L2_FRAME 2
#define L3_FRAME 3

/* -- the saved register frame of x86_64.S (Mini-OS's struct pt_regs) -------------------------------- */
struct pt_regs {
    unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8;
    unsigned long rax, rcx, rdx, rsi, rdi, orig_rax;
    unsigned long rip, cs, eflags, rsp, ss;
};

/* -- events on / off: the vCPU's upcall mask in shared_info is the PV kernel's interrupt flag ---------- */
extern struct shared_info *HYPERVISOR_shared_info;
#define vcpu_info0() ((volatile struct vcpu_info *)&HYPERVISOR_shared_info->vcpu_info[0])

/* Any hypercall returns through Xen's "events pending?" check, which delivers the upcall (old Mini-OS). */
static inline void force_evtchn_callback(void) { (void)HYPERVISOR_xen_version(XENVER_version, 0); }

static inline void local_irq_disable(void) { vcpu_info0()->evtchn_upcall_mask = 1; barrier(); }
static inline void local_irq_enable(void)
{
    volatile struct vcpu_info *v = vcpu_info0();
    barrier();
    v->evtchn_upcall_mask = 0;
    barrier();                          /* unmask, then look: an event raised in between is not lost */
    if (v->evtchn_upcall_pending)
        force_evtchn_callback();
}
#define local_irq_save(flags) do { (flags) = vcpu_info0()->evtchn_upcall_mask; local_irq_disable(); } while (0)
#define local_irq_restore(flags) do { if (flags) local_irq_disable(); else local_irq_enable(); } while (0)
static inline int irqs_disabled(void) { return vcpu_info0()->evtchn_upcall_mask; }

/* Atomic bit operations on the shared bitmaps (Xen updates them concurrently on real hardware). */
static inline void synch_set_bit(unsigned long nr, volatile void *addr)
{ __asm__ volatile("lock btsq %1,%0" : "+m"(*(volatile long *)addr) : "Ir"(nr) : "memory"); }
static inline void synch_clear_bit(unsigned long nr, volatile void *addr)
{ __asm__ volatile("lock btrq %1,%0" : "+m"(*(volatile long *)addr) : "Ir"(nr) : "memory"); }
static inline int synch_test_bit(unsigned long nr, const volatile void *addr)
{ return (((const volatile unsigned long *)addr)[nr >> 6] >> (nr & 63)) & 1; }
static inline int synch_test_and_set_bit(unsigned long nr, volatile void *addr)
{
    unsigned char old;
    __asm__ volatile("lock btsq %2,%1; setc %0" : "=q"(old), "+m"(*(volatile long *)addr) : "Ir"(nr) : "memory");
    return old;
}
static inline unsigned long xchg(volatile unsigned long *p, unsigned long v)
{ __asm__ volatile("xchgq %0,%1" : "+r"(v), "+m"(*p) :: "memory"); return v; }
static inline unsigned long __ffs(unsigned long w) { __asm__("bsfq %1,%0" : "=r"(w) : "rm"(w)); return w; }
static inline uint64_t rdtsc(void)
{ uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
/* wrmsr is privileged: in a PV kernel it traps and Xen emulates the segment-base MSRs. */
static inline void wrmsrl(uint32_t msr, uint64_t val)
{ __asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)val), "d"((uint32_t)(val >> 32)) : "memory"); }

/* -- console ------------------------------------------------------------------------------------------ */
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void xprintk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void get_console(struct start_info *si);
void init_console(void);
extern uint32_t console_evtchn;

/* -- kernel ------------------------------------------------------------------------------------------- */
extern struct start_info start_info;
extern char cmdline[MAX_CMDLINE_SIZE];
extern char stack[];
void start_kernel(void);
void do_exit(void) __attribute__((noreturn));
void trap_init(void);
const char *cmdline_value(const char *key);
#define BUG_ON(c) do { if (c) { printk("BUG at %s:%d\n", __FILE__, __LINE__); do_exit(); } } while (0)

/* -- memory ------------------------------------------------------------------------------------------- */
extern pgentry_t *pt_base;
void arch_mm_preinit(struct start_info *si);
void init_mm(void);
unsigned long alloc_pages(int order);
#define alloc_page() alloc_pages(0)
void free_pages(void *pointer, int order);
void *malloc(size_t size);
void free(void *p);
char *strdup(const char *s);
void *map_frames_ex(const unsigned long *mfns, unsigned long n, unsigned long stride, unsigned long incr,
                    unsigned long alignment, domid_t id, int *err, unsigned long prot);
#define map_frames(f, n) map_frames_ex(f, n, 1, 0, 1, DOMID_SELF, NULL, L1_PROT)

/* -- events ------------------------------------------------------------------------------------------- */
#define NR_EVS 4096                     /* EVTCHN_2L_NR_CHANNELS on x86_64 */
typedef void (*evtchn_handler_t)(evtchn_port_t, struct pt_regs *, void *);
void init_events(void);
evtchn_port_t bind_evtchn(evtchn_port_t port, evtchn_handler_t handler, void *data);
evtchn_port_t bind_virq(uint32_t virq, evtchn_handler_t handler, void *data);
void unbind_evtchn(evtchn_port_t port);
void mask_evtchn(uint32_t port);
void unmask_evtchn(uint32_t port);
void clear_evtchn(uint32_t port);
int notify_remote_via_evtchn(evtchn_port_t port);

/* -- time --------------------------------------------------------------------------------------------- */
typedef int64_t s_time_t;
#define NOW()            ((s_time_t)monotonic_clock())
#define SECONDS(s)       (((s_time_t)(s)) * 1000000000LL)
#define MILLISECS(ms)    (((s_time_t)(ms)) * 1000000LL)
struct timeval { long tv_sec; long tv_usec; };
uint64_t monotonic_clock(void);
int gettimeofday(struct timeval *tv, void *tz);
void block_domain(s_time_t until);
void init_time(void);

/* -- grant tables ------------------------------------------------------------------------------------- */
void init_gnttab(void);

/* -- threads ------------------------------------------------------------------------------------------ */
struct thread {
    const char *name;
    char *stack;
    unsigned long sp, ip;               /* saved by arch_switch_threads */
    uint32_t flags;
    s_time_t wakeup_time;
    struct thread *next;                /* thread list (round robin) */
};
#define RUNNABLE_FLAG 1
extern struct thread *current;
void init_sched(void);
struct thread *create_thread(const char *name, void (*function)(void *), void *data);
void schedule(void);
void block(struct thread *t);
void wake(struct thread *t);
void msleep(uint32_t millisecs);
void run_idle_thread(void) __attribute__((noreturn));
void exit_thread(void) __attribute__((noreturn));

/* Wait queues (Mini-OS wait.h): a waiter blocks its thread until wake_up() makes every waiter runnable. */
struct wait_queue { struct thread *thread; struct wait_queue *next; int queued; };
struct wait_queue_head { struct wait_queue *first; };
#define DECLARE_WAIT_QUEUE_HEAD(name) struct wait_queue_head name = { 0 }
#define DEFINE_WAIT(name) struct wait_queue name = { .thread = current, .next = 0, .queued = 0 }
void add_waiter(struct wait_queue *w, struct wait_queue_head *q);
void remove_waiter(struct wait_queue *w, struct wait_queue_head *q);
void wake_up(struct wait_queue_head *q);
#define wait_event(wq, condition) do {                      \
        DEFINE_WAIT(__w);                                   \
        for (;;) {                                          \
            add_waiter(&__w, &(wq));                        \
            if (condition)                                  \
                break;                                      \
            schedule();                                     \
        }                                                   \
        remove_waiter(&__w, &(wq));                         \
    } while (0)

/* -- xenbus ------------------------------------------------------------------------------------------- */
typedef uint32_t xenbus_transaction_t;
#define XBT_NIL ((xenbus_transaction_t)0)
struct xenbus_event { char *path; char *token; struct xenbus_event *next; };
typedef struct xenbus_event *xenbus_event_queue;
void get_xenbus(struct start_info *si);
void init_xenbus(void);
char *xenbus_read(xenbus_transaction_t xbt, const char *path, char **value);
char *xenbus_write(xenbus_transaction_t xbt, const char *path, const char *value);
char *xenbus_rm(xenbus_transaction_t xbt, const char *path);
char *xenbus_ls(xenbus_transaction_t xbt, const char *dir, char ***contents);
char *xenbus_printf(xenbus_transaction_t xbt, const char *node, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int xenbus_scanf(xenbus_transaction_t xbt, const char *node, const char *path, unsigned long *value);
char *xenbus_watch_path_token(xenbus_transaction_t xbt, const char *path, const char *token,
                              xenbus_event_queue *events);
char *xenbus_unwatch_path_token(xenbus_transaction_t xbt, const char *path, const char *token);
char *xenbus_transaction_start(xenbus_transaction_t *xbt);
char *xenbus_transaction_end(xenbus_transaction_t xbt, int abort, int *retry);
char **xenbus_wait_for_watch_return(xenbus_event_queue *queue);
void xenbus_wait_for_watch(xenbus_event_queue *queue);
domid_t xenbus_get_self_id(void);
void init_shutdown(void);

#endif
