/* Scenario `xtfgaps2`: more of the PV ABI the Xen Test Framework's pv64 tests rely on (round 2), checked in
 * our own words. A small harness runs probe instructions in guest kernel or guest user mode and records
 * the exception Xen bounces back (vector, error code, rip and the rflags of the frame).
 *  - The virtual IOPL: PHYSDEVOP_set_iopl makes `cli`/`sti`/`in`/`out` complete instead of #GP(0) once the
 *    IOPL covers the mode (guest kernel = CPL 1, user = CPL 3); `in` reads all ones (no device), `cli` is a
 *    no-op. With VMASST_TYPE_architectural_iopl the kernel counts as CPL 0, the IOPL follows each
 *    HYPERVISOR_iret frame and shows in bounce frames.
 *  - Linear page tables: an L4 entry may map its own L4 read-only (a recursive mapping through which the
 *    guest reads its page tables); the same entry writable is refused (XSA-182).
 *  - CPUID faulting: enumerated in MSR_PLATFORM_INFO, switched in MSR_MISC_FEATURES_ENABLES; while on, a
 *    cpuid from guest user mode (plain or behind the forced-emulation prefix) takes #GP(0) at the cpuid.
 *  - SYSENTER from guest user mode (our CPU is an Intel): Xen's frame has rip 0, cs 3, rsp 0 and
 *    FLAT_USER_SS; it goes to the sysenter callback, or as #GP(0) to the #GP handler when there is none.
 *  - A non-canonical access through the stack segment (rsp/rbp-based operand without fs/gs, or the stack
 *    itself) is #SS(0), not #GP(0).
 *  - sysctl/domctl exist for a domU too: -EACCES for another interface version, then -EPERM (XSM), or
 *    -ESRCH for a domctl on a domain that does not exist.
 *  - Mapping grants: a domain may map the grants it gives itself (host mapping by address or by PTE,
 *    device mapping), the grant entry shows GTF_reading/GTF_writing while mapped, a writable mapping keeps
 *    the frame from becoming a page table, and unmapping checks the PTE (also after unmap_and_replace
 *    moved it: XSA-234). dom0 grants us nothing; DOMID_SELF is not a domain to map from.
 *  - `syscall` from guest user mode: #UD at the instruction while no syscall callback is registered; the
 *    callback runs with DF clear (the user's rflags, DF included, in r11 and the frame). */
#include "selftest.h"

#define EINVAL 22
#define PHYSDEVOP_set_iopl 6
#define VMASST_TYPE_architectural_iopl 4
#define NO_FAULT (-1L)
#define EXC(vec, ec) (((long)(vec) << 16) | (long)(ec))

/* -- the harness --------------------------------------------------------------------------------------- */
volatile unsigned long fx_vec, fx_ec, fx_rip, fx_rflags, fx_fixup;
volatile long fx_seen;
unsigned long fx_kernel_rsp;              /* run_user(): the kernel context to come back to */
static unsigned long user_stack[512] __attribute__((aligned(16), used));
static unsigned long kernel_stack[1024] __attribute__((aligned(16)));

/* Called by the exception stubs with Xen's frame {rcx, r11, [ec], rip, cs, rflags, rsp, ss}: note what
 * happened and resume at the probe's fixup address. */
void fx_record(unsigned long *frame, unsigned long vec, unsigned long has_ec)
{
    unsigned long *f = frame + 2;
    fx_ec = has_ec ? *f++ : 0;
    fx_vec = vec;
    fx_rip = f[0];
    fx_rflags = f[2];
    fx_seen++;
    if (f[0] == 0 && (f[1] & 0xffff) == 3) {   /* sysenter frame: back on the SYSEXIT registers */
        f[1] = FLAT_USER_CS;
        f[3] = frame[0];                    /* rsp from rcx */
        f[4] = FLAT_USER_SS;
    }
    if (!fx_fixup) {
        printk("xtfgaps2: unexpected exception %lu[%lx] at %lx\n", vec, fx_ec, f[0]);
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    f[0] = fx_fixup;
}

/* Exception stubs: save the registers the C code may clobber, record, return with HYPERVISOR_iret. */
#define FX_STUB(name, vec, ec, skip_ec)                                                     \
    __asm__(".pushsection .text\n\t.globl " #name "\n" #name ":\n\t"                        \
            "push %rax\n\tpush %rdx\n\tpush %rsi\n\tpush %rdi\n\tpush %r8\n\tpush %r9\n\t"   \
            "push %r10\n\tpush %rbp\n\t"                                                    \
            "lea 64(%rsp), %rdi\n\tmov $" #vec ", %esi\n\tmov $" #ec ", %edx\n\t"          \
            "mov %rsp, %rbp\n\tand $-16, %rsp\n\tcall fx_record\n\tmov %rbp, %rsp\n\t"      \
            "pop %rbp\n\tpop %r10\n\tpop %r9\n\tpop %r8\n\tpop %rdi\n\tpop %rsi\n\t"        \
            "pop %rdx\n\tpop %rax\n\tpop %rcx\n\tpop %r11\n\t"                              \
            skip_ec                                                                         \
            "pushq $0\n\tjmp hypercall_page + 23 * 32\n.popsection")
FX_STUB(fx_de, 0, 0, "");
FX_STUB(fx_ud, 6, 0, "");
FX_STUB(fx_ss, 12, 1, "add $8, %rsp\n\t");
FX_STUB(fx_gp, 13, 1, "add $8, %rsp\n\t");
extern char fx_de[], fx_ud[], fx_ss[], fx_gp[];

/* run_user(fn, rflags): call fn() in guest user mode (HYPERVISOR_iret with `rflags`, which may carry an
 * IOPL); fn's result comes back through `int $0x81` (a DPL 3 trap entry) that restores the kernel context. */
long run_user(void (*fn)(void), unsigned long rflags);
__asm__(".pushsection .text\n"
        "run_user:\n\t"
        "push %rbx\n\tpush %rbp\n\tpush %r12\n\tpush %r13\n\tpush %r14\n\tpush %r15\n\t"
        "mov %rsp, fx_kernel_rsp(%rip)\n\t"
        "pushq $0xe02b\n\t"                                  /* ss */
        "lea user_stack+4096(%rip), %rax\n\tpush %rax\n\t"    /* rsp */
        "push %rsi\n\t"                                      /* rflags */
        "pushq $0xe033\n\t"                                  /* cs: RPL 3, user mode */
        "lea user_trampoline(%rip), %rax\n\tpush %rax\n\t"   /* rip */
        "pushq $0\n\t"                                       /* flags */
        "jmp hypercall_page + 23 * 32\n"
        "user_trampoline:\n\t"
        "call *%rdi\n\t"
        "int $0x81\n"                                        /* rax: fn's result */
        "user_return:\n\t"
        "mov fx_kernel_rsp(%rip), %rsp\n\t"
        "pop %r15\n\tpop %r14\n\tpop %r13\n\tpop %r12\n\tpop %rbp\n\tpop %rbx\n\t"
        "ret\n.popsection");
extern char user_return[];

/* A probe is one instruction followed by `ret`; a fault in it resumes at the `ret`. */
#define PROBE(name, insn)                                                                   \
    __asm__(".pushsection .text\n\t.globl " #name "\n" #name ":\n\t" insn "\n"              \
            ".globl " #name "_end\n" #name "_end:\n\tret\n.popsection");                    \
    extern char name[], name##_end[]
PROBE(probe_cli, "cli");
PROBE(probe_sti, "sti");
PROBE(probe_outb, "outb %al, $0x80");
PROBE(probe_inb, "mov $0x1234, %eax\n\tinb $0x80, %al");
PROBE(probe_ud2, "ud2");
PROBE(probe_nop, "nop");

/* Run a probe in kernel (user = 0) or user mode; NO_FAULT or EXC(vector, error code). */
static long probe(char *fn, char *end, int user, unsigned long rflags)
{
    fx_seen = 0;
    fx_fixup = (unsigned long)end;
    if (user)
        run_user((void (*)(void))fn, rflags);
    else
        ((void (*)(void))fn)();
    fx_fixup = 0;
    return fx_seen ? EXC(fx_vec, fx_ec) : NO_FAULT;
}

static void harness_init(void)
{
    struct trap_info traps[] = {
        { 0, 0, FLAT_KERNEL_CS, (unsigned long)fx_de },
        { 6, 0, FLAT_KERNEL_CS, (unsigned long)fx_ud },
        { 12, 0, FLAT_KERNEL_CS, (unsigned long)fx_ss },
        { 13, 0, FLAT_KERNEL_CS, (unsigned long)fx_gp },
        { 0x81, 3, FLAT_KERNEL_CS, (unsigned long)user_return },
        { 0, 0, 0, 0 } };
    struct mmuext_op op = { .cmd = MMUEXT_NEW_USER_BASEPTR, .arg1.mfn = virt_to_mfn((void *)si->pt_base) };
    expect("harness_trap_table", HYPERVISOR_set_trap_table(traps), 0);
    expect("harness_stack_switch",
           HYPERVISOR_stack_switch(FLAT_KERNEL_SS, (unsigned long)(kernel_stack + 1024)), 0);
    expect("harness_user_baseptr", HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF), 0);
}

/* -- the virtual IOPL ---------------------------------------------------------------------------------- */
static long set_iopl(unsigned int iopl)
{
    return _hypercall(33, PHYSDEVOP_set_iopl, (unsigned long)&iopl, 0, 0, 0);   /* physdev_op */
}

static unsigned long inb_result(int user, unsigned long rflags)
{
    unsigned long rax;
    if (user)
        return run_user((void (*)(void))probe_inb, rflags) & 0xffff;
    __asm__ volatile("call probe_inb" : "=a"(rax) : : "memory");
    return rax & 0xffff;
}

static void check_iopl(void)
{
    unsigned long u = 0x002;                            /* user rflags: IF clear (events stay masked) */
    long gp0 = EXC(13, 0);

    expect("set_iopl_4", set_iopl(4), -EINVAL);
    expect("set_iopl_0", set_iopl(0), 0);
    expect("iopl0_kernel_cli", probe(probe_cli, probe_cli_end, 0, 0), gp0);
    expect("iopl0_kernel_outb", probe(probe_outb, probe_outb_end, 0, 0), gp0);
    expect("iopl0_user_sti", probe(probe_sti, probe_sti_end, 1, u), gp0);

    expect("set_iopl_1", set_iopl(1), 0);
    expect("iopl1_kernel_cli", probe(probe_cli, probe_cli_end, 0, 0), NO_FAULT);
    expect("iopl1_kernel_sti", probe(probe_sti, probe_sti_end, 0, 0), NO_FAULT);
    expect("iopl1_kernel_outb", probe(probe_outb, probe_outb_end, 0, 0), NO_FAULT);
    expect("iopl1_kernel_inb", inb_result(0, 0), 0x12ff);
    expect("iopl1_user_cli", probe(probe_cli, probe_cli_end, 1, u), gp0);
    expect("iopl1_user_outb", probe(probe_outb, probe_outb_end, 1, u), gp0);

    expect("set_iopl_3", set_iopl(3), 0);
    expect("iopl3_user_cli", probe(probe_cli, probe_cli_end, 1, u), NO_FAULT);
    expect("iopl3_user_inb", inb_result(1, u), 0x12ff);
    /* Without the vm_assist the iret frame's IOPL is ignored and bounce frames show IOPL 0. */
    expect("iopl3_user_with_frame_iopl0", probe(probe_outb, probe_outb_end, 1, u), NO_FAULT);
    expect("frame_iopl_hidden", (probe(probe_ud2, probe_ud2_end, 0, 0), (fx_rflags >> 12) & 3), 0);

    expect("set_iopl_0_again", set_iopl(0), 0);
    expect("vm_assist_architectural_iopl", HYPERVISOR_vm_assist(VMASST_CMD_enable,
                                                               VMASST_TYPE_architectural_iopl), 0);
    expect("arch_iopl0_kernel_cli", probe(probe_cli, probe_cli_end, 0, 0), NO_FAULT);
    expect("arch_iopl0_user_cli", probe(probe_cli, probe_cli_end, 1, u), gp0);
    /* The IOPL of an iret frame becomes the virtual IOPL... */
    expect("arch_iopl3_user_cli", probe(probe_cli, probe_cli_end, 1, u | (3 << 12)), NO_FAULT);
    /* ... stays after the return to the kernel, and bounce frames carry it. */
    expect("arch_frame_iopl", (probe(probe_ud2, probe_ud2_end, 0, 0), (fx_rflags >> 12) & 3), 3);
    expect("arch_iopl_back_to_0", probe(probe_nop, probe_nop_end, 1, u), NO_FAULT);
    expect("arch_frame_iopl_0", (probe(probe_ud2, probe_ud2_end, 0, 0), (fx_rflags >> 12) & 3), 0);
    expect("vm_assist_off", HYPERVISOR_vm_assist(VMASST_CMD_disable, VMASST_TYPE_architectural_iopl), 0);
}

/* -- CPUID faulting ----------------------------------------------------------------------------------- */
PROBE(probe_cpuid, "xor %eax, %eax\n\tcpuid_insn: cpuid");
PROBE(probe_fep_cpuid, "xor %eax, %eax\n\tud2; .ascii \"xen\"\n\tfep_cpuid_insn: cpuid");
PROBE(probe_wrmsr_misc2, "mov $0x140, %ecx\n\tmov $2, %eax\n\txor %edx, %edx\n\twrmsr");
extern char cpuid_insn[], fep_cpuid_insn[];

static unsigned long rdmsr(unsigned int msr)
{
    unsigned int lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((unsigned long)hi << 32) | lo;
}

static void wrmsr(unsigned int msr, unsigned long v)
{
    __asm__ volatile("wrmsr" :: "c"(msr), "a"((unsigned int)v), "d"((unsigned int)(v >> 32)));
}

static void check_cpuid_faulting(void)
{
    unsigned long u = 0x002;
    long gp0 = EXC(13, 0);

    expect("platform_info_cpuid_faulting", (rdmsr(0xce) >> 31) & 1, 1);
    expect("misc_features_default", rdmsr(0x140), 0);
    expect("user_cpuid_no_faulting", probe(probe_cpuid, probe_cpuid_end, 1, u), NO_FAULT);
    wrmsr(0x140, 1);
    expect("misc_features_cpuid_faulting", rdmsr(0x140), 1);
    expect("kernel_cpuid_faulting_on", probe(probe_cpuid, probe_cpuid_end, 0, 0), NO_FAULT);
    expect("kernel_fep_cpuid_faulting_on", probe(probe_fep_cpuid, probe_fep_cpuid_end, 0, 0), NO_FAULT);
    expect("user_cpuid_faults", probe(probe_cpuid, probe_cpuid_end, 1, u), gp0);
    expect("user_cpuid_fault_rip", fx_rip == (unsigned long)cpuid_insn, 1);
    expect("user_fep_cpuid_faults", probe(probe_fep_cpuid, probe_fep_cpuid_end, 1, u), gp0);
    expect("user_fep_cpuid_fault_rip", fx_rip == (unsigned long)fep_cpuid_insn, 1);
    expect("misc_features_reserved_bit", probe(probe_wrmsr_misc2, probe_wrmsr_misc2_end, 0, 0), gp0);
    wrmsr(0x140, 0);
    expect("user_cpuid_faulting_off", probe(probe_cpuid, probe_cpuid_end, 1, u), NO_FAULT);
}

/* -- SYSENTER ------------------------------------------------------------------------------------------ */
volatile unsigned long sys_seen, sys_rip, sys_cs, sys_rsp, sys_ss, sys_rcx;

/* The sysenter callback: note Xen's frame {rcx, r11, rip, cs, rflags, rsp, ss}, then return to the user
 * code as SYSEXIT would (rip from rdx, rsp from rcx). */
void fx_sysenter_cb(unsigned long *frame, unsigned long rdx)
{
    sys_seen++;
    sys_rip = frame[2];
    sys_cs = frame[3] & 0xffff;
    sys_rsp = frame[5];
    sys_ss = frame[6];
    sys_rcx = frame[0];
    frame[2] = rdx;
    frame[3] = FLAT_USER_CS;
    frame[5] = frame[0];
    frame[6] = FLAT_USER_SS;
}
__asm__(".pushsection .text\n\t.globl fx_sysenter\nfx_sysenter:\n\t"
        "push %rax\n\tpush %rdx\n\tpush %rsi\n\tpush %rdi\n\tpush %r8\n\tpush %r9\n\tpush %r10\n\t"
        "push %rbp\n\tlea 64(%rsp), %rdi\n\tmov 48(%rsp), %rsi\n\t"
        "mov %rsp, %rbp\n\tand $-16, %rsp\n\tcall fx_sysenter_cb\n\tmov %rbp, %rsp\n\t"
        "pop %rbp\n\tpop %r10\n\tpop %r9\n\tpop %r8\n\tpop %rdi\n\tpop %rsi\n\tpop %rdx\n\tpop %rax\n\t"
        "pop %rcx\n\tpop %r11\n\tpushq $0\n\tjmp hypercall_page + 23 * 32\n.popsection");
extern char fx_sysenter[];
PROBE(probe_sysenter, "mov %rsp, %rcx\n\tlea 1f(%rip), %rdx\n\tsysenter\n1:");

static void check_sysenter(void)
{
    unsigned long u = 0x002;
    struct callback_register cb = { .type = 5 /* CALLBACKTYPE_sysenter */, .flags = CALLBACKF_mask_events,
                                    .address = (unsigned long)fx_sysenter };

    expect("sysenter_no_callback_gp", probe(probe_sysenter, probe_sysenter_end, 1, u), EXC(13, 0));
    expect("sysenter_gp_frame", fx_rip == 0, 1);
    expect("sysenter_register_callback", HYPERVISOR_callback_op(CALLBACKOP_register, &cb), 0);
    expect("sysenter_to_callback", probe(probe_sysenter, probe_sysenter_end, 1, u), NO_FAULT);
    expect("sysenter_callback_entered", sys_seen, 1);
    expect("sysenter_frame_rip", sys_rip, 0);
    expect("sysenter_frame_cs", sys_cs, 3);
    expect("sysenter_frame_rsp", sys_rsp, 0);
    expect("sysenter_frame_ss", sys_ss, FLAT_USER_SS);
    expect("sysenter_rcx_kept", sys_rcx >= (unsigned long)user_stack &&
           sys_rcx <= (unsigned long)(user_stack + 512), 1);
}

/* -- #SS for non-canonical stack accesses ------------------------------------------------------------- */
/* Probes with a tail that runs after the fixup point (to restore the register they spoil). */
#define PROBE2(name, insn, tail)                                                            \
    __asm__(".pushsection .text\n\t.globl " #name "\n" #name ":\n\t" insn "\n"              \
            ".globl " #name "_end\n" #name "_end:\n\t" tail "\n\tret\n.popsection");         \
    extern char name[], name##_end[]
#define NONCANON "movabs $0x8000000040000000, "
PROBE2(probe_ss_rbp, "mov %rbp, %rdx\n\t" NONCANON "%rbp\n\tmovb $0, (%rbp)", "mov %rdx, %rbp");
PROBE2(probe_ss_rbp_disp, "mov %rbp, %rdx\n\t" NONCANON "%rbp\n\tmovb $0, 8(%rbp,%rdx,1)", "mov %rdx, %rbp");
PROBE2(probe_fs_rbp, "mov %rbp, %rdx\n\t" NONCANON "%rbp\n\tmovb $0, %fs:(%rbp)", "mov %rdx, %rbp");
PROBE2(probe_ds_rax, NONCANON "%rax\n\tmovb $0, (%rax)", "");
PROBE2(probe_push, "mov %rsp, %rdx\n\t" NONCANON "%rsp\n\tpush %rax", "mov %rdx, %rsp");

static void check_stack_segment(void)
{
    unsigned long u = 0x002;
    long ss0 = EXC(12, 0), gp0 = EXC(13, 0);

    expect("noncanon_rbp_kernel", probe(probe_ss_rbp, probe_ss_rbp_end, 0, 0), ss0);
    expect("noncanon_rbp_user", probe(probe_ss_rbp, probe_ss_rbp_end, 1, u), ss0);
    expect("noncanon_rbp_index_user", probe(probe_ss_rbp_disp, probe_ss_rbp_disp_end, 1, u), ss0);
    expect("noncanon_fs_rbp_user", probe(probe_fs_rbp, probe_fs_rbp_end, 1, u), gp0);
    expect("noncanon_rax_user", probe(probe_ds_rax, probe_ds_rax_end, 1, u), gp0);
    expect("noncanon_push_user", probe(probe_push, probe_push_end, 1, u), ss0);
}

/* -- sysctl / domctl ---------------------------------------------------------------------------------- */
struct ctl_op { uint32_t cmd, interface_version; uint16_t domain, pad[3]; uint8_t u[128]; };

static long ctl(unsigned int nr, unsigned int cmd, unsigned int version, unsigned int domain)
{
    static struct ctl_op op;
    op.cmd = cmd;
    op.interface_version = version;
    op.domain = domain;          /* (a sysctl has its union here: the field is ignored) */
    return _hypercall(nr, (unsigned long)&op, 0, 0, 0, 0);
}

static void check_ctl_ops(void)
{
    expect("sysctl_wrong_version", ctl(35, 27, 0x14, 0), -13);
    expect("sysctl_denied", ctl(35, 27, 0x15, 0), -1);
    expect("domctl_wrong_version", ctl(36, 1, 0x16, 0), -13);
    expect("domctl_createdomain_denied", ctl(36, 1, 0x17, 0), -1);
    expect("domctl_no_such_domain", ctl(36, 5, 0x17, 1234), -3);
    expect("domctl_dom0_denied", ctl(36, 5, 0x17, 0), -1);
}

/* -- mapping grants ----------------------------------------------------------------------------------- */
struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; };
struct gmap { uint64_t host_addr; uint32_t flags, ref; domid_t dom; int16_t status; uint32_t handle;
              uint64_t dev_bus_addr; };
struct gunmap { uint64_t host_addr, dev_bus_addr; uint32_t handle; int16_t status; };
#define GNTMAP_device_map 1
#define GNTMAP_host_map 2
#define GNTMAP_readonly 4
#define GNTMAP_contains_pte 16
static uint8_t gframe[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

static struct gmap gmap(unsigned long addr, unsigned int flags, unsigned int ref, unsigned int dom)
{
    struct gmap m = { .host_addr = addr, .flags = flags, .ref = ref, .dom = dom, .status = 99 };
    expect("gnttab_map_rc", HYPERVISOR_grant_table_op(0, &m, 1), 0);
    return m;
}

static long gunmap(unsigned long addr, unsigned long bus, unsigned int handle, unsigned int op)
{
    struct gunmap u = { .host_addr = addr, .dev_bus_addr = bus, .handle = handle, .status = 99 };
    expect("gnttab_unmap_rc", HYPERVISOR_grant_table_op(op, &u, 1), 0);
    return u.status;
}

static long own_domid(void)
{
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &au);
    struct evtchn_status st = { .dom = DOMID_SELF, .port = au.port };
    HYPERVISOR_event_channel_op(EVTCHNOP_status, &st);
    return st.u.unbound.dom;                    /* DOMID_SELF, resolved by the hypervisor */
}

static void check_grant_mapping(void)
{
    unsigned long base = si->pt_base + (si->nr_pt_frames + 20) * PAGE_SIZE;
    unsigned long va_a = base + PAGE_SIZE, va_b = base + 2 * PAGE_SIZE;
    unsigned long frame_list[1];
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1, .frame_list = frame_list };
    long domid = own_domid();
    struct pin { uint32_t cmd, pad; unsigned long mfn, arg2; } pin = { 1 /* PIN_L1 */, 0, virt_to_mfn(gframe), 0 };

    expect("gnttab_setup_table", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1), 0);
    expect("gnttab_map_table", HYPERVISOR_update_va_mapping(base, (frame_list[0] << PAGE_SHIFT) | 7, UVMF_INVLPG), 0);
    volatile struct grant_entry_v1 *gt = (struct grant_entry_v1 *)base;
    gt[8].domid = domid;
    gt[8].frame = virt_to_mfn(gframe);
    gt[8].flags = 1;                                             /* GTF_permit_access */
    gframe[0] = 0x5a;
    /* Our own mapping of gframe read-only: the grants hold the only writable references from now on. */
    expect("gnt_frame_ro", HYPERVISOR_update_va_mapping((unsigned long)gframe,
                                                        (virt_to_mfn(gframe) << PAGE_SHIFT) | 5, UVMF_INVLPG), 0);

    expect("gnt_map_domid_self", gmap(va_a, GNTMAP_host_map, 8, DOMID_SELF).status, -2);
    expect("gnt_map_dom0", gmap(va_a, GNTMAP_host_map, 8, 0).status, -1);
    expect("gnt_map_no_kind", gmap(va_a, 0, 8, domid).status, -3);
    expect("gnt_map_bad_ref", gmap(va_a, GNTMAP_host_map, 100000, domid).status, -3);

    struct gmap h1 = gmap(va_a, GNTMAP_host_map, 8, domid);
    expect("gnt_map_rw", h1.status, 0);
    expect("gnt_map_reads_frame", *(volatile uint8_t *)va_a, 0x5a);
    expect("gnt_entry_flags_rw", gt[8].flags, 0x19);             /* permit | reading | writing */
    expect("gnt_rw_blocks_pin_l1", HYPERVISOR_mmuext_op((struct mmuext_op *)&pin, 1, 0, DOMID_SELF), -EINVAL);
    struct gmap h2 = gmap(va_b, GNTMAP_host_map | GNTMAP_device_map | GNTMAP_readonly, 8, domid);
    expect("gnt_map_ro_dev", h2.status, 0);
    expect("gnt_map_bus_addr", h2.dev_bus_addr, virt_to_mfn(gframe) << PAGE_SHIFT);
    expect("gnt_unmap_wrong_addr", gunmap(va_b, 0, h1.handle, 1), -1);
    expect("gnt_unmap_rw", gunmap(va_a, 0, h1.handle, 1), 0);
    expect("gnt_entry_flags_ro", gt[8].flags, 0x9);
    expect("gnt_unmap_host_ro", gunmap(va_b, 0, h2.handle, 1), 0);
    expect("gnt_unmap_bad_bus", gunmap(0, 0x1000, h2.handle, 1), -6);
    expect("gnt_unmap_dev", gunmap(0, h2.dev_bus_addr, h2.handle, 1), 0);
    expect("gnt_entry_flags_idle", gt[8].flags, 1);
    expect("gnt_unmap_stale_handle", gunmap(va_b, 0, h2.handle, 1), -4);

    /* By PTE machine address: an address that is not a PTE's (XSA-227) is refused. */
    unsigned long pte_ma = (virt_to_mfn((void *)si->pt_base) << PAGE_SHIFT) + 8;   /* an L4 slot */
    expect("gnt_map_pte_misaligned", gmap(pte_ma - 2, GNTMAP_host_map | GNTMAP_contains_pte, 8, domid).status, -1);
    expect("gnt_map_pte_not_l1", gmap(pte_ma, GNTMAP_host_map | GNTMAP_contains_pte, 8, domid).status, -1);

    /* unmap_and_replace moves the PTE that was at new_addr into host_addr's slot (XSA-234's shuffle): the
     * writable mapping now lives at va_b, so unmapping it at va_a fails and at va_b works. */
    struct gmap h3 = gmap(va_a, GNTMAP_host_map, 8, domid);
    struct gmap h4 = gmap(va_b, GNTMAP_host_map | GNTMAP_readonly, 8, domid);
    expect("gnt_unmap_and_replace", gunmap(va_b, va_a, h4.handle, 7), 0);
    expect("gnt_moved_mapping_reads", *(volatile uint8_t *)va_b, 0x5a);
    expect("gnt_unmap_where_it_was", gunmap(va_a, 0, h3.handle, 1), -1);
    expect("gnt_unmap_where_it_is", gunmap(va_b, 0, h3.handle, 1), 0);
    expect("gnt_entry_flags_end", gt[8].flags, 1);
    /* No mapping left: no writable reference either, gframe may become a page table. */
    expect("gnt_unmapped_pin_l1", HYPERVISOR_mmuext_op((struct mmuext_op *)&pin, 1, 0, DOMID_SELF), 0);
    pin.cmd = 4;                                                  /* UNPIN_TABLE */
    expect("gnt_unpin", HYPERVISOR_mmuext_op((struct mmuext_op *)&pin, 1, 0, DOMID_SELF), 0);
}

/* -- syscall from user mode ---------------------------------------------------------------------------- */
volatile unsigned long sc_seen, sc_flags, sc_r11;
__asm__(".pushsection .text\n\t.globl sc_entry\nsc_entry:\n\t"
        "push %rax\n\tpushfq\n\tpop %rax\n\tmov %rax, sc_flags(%rip)\n\tmov %r11, sc_r11(%rip)\n\t"
        "incq sc_seen(%rip)\n\tpop %rax\n\t"
        "pop %rcx\n\tpop %r11\n\tpushq $0x100\n\tjmp hypercall_page + 23 * 32\n.popsection");
extern char sc_entry[];
PROBE(probe_syscall, "syscall_insn: syscall");
PROBE(probe_std_syscall, "std\n\tsyscall\n\tcld");
extern char syscall_insn[];

static void check_user_syscall(void)
{
    unsigned long u = 0x002;
    struct callback_register cb = { .type = CALLBACKTYPE_syscall, .flags = CALLBACKF_mask_events,
                                    .address = (unsigned long)sc_entry };

    expect("syscall_no_callback_ud", probe(probe_syscall, probe_syscall_end, 1, u), EXC(6, 0));
    expect("syscall_ud_rip", fx_rip == (unsigned long)syscall_insn, 1);
    expect("syscall_register_callback", HYPERVISOR_callback_op(CALLBACKOP_register, &cb), 0);
    expect("syscall_to_callback", probe(probe_std_syscall, probe_std_syscall_end, 1, u), NO_FAULT);
    expect("syscall_callback_entered", sc_seen, 1);
    expect("syscall_callback_df_clear", (sc_flags >> 10) & 1, 0);
    expect("syscall_user_df_in_r11", (sc_r11 >> 10) & 1, 1);
}

/* -- linear page tables ------------------------------------------------------------------------------- */
#define LINEAR_SLOT 100UL

static long set_l4_entry(unsigned long slot, unsigned long val)
{
    unsigned long l4_ma = virt_to_mfn((void *)si->pt_base) << PAGE_SHIFT;
    struct mmu_update u = { .ptr = (l4_ma + slot * 8) | MMU_NORMAL_PT_UPDATE, .val = val };
    return HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF);
}

static void check_linear_pagetables(void)
{
    unsigned long *l4 = (unsigned long *)si->pt_base;
    unsigned long l4_ma = virt_to_mfn(l4) << PAGE_SHIFT;
    unsigned long *self = (unsigned long *)((LINEAR_SLOT << 39) | (LINEAR_SLOT << 30) |
                                            (LINEAR_SLOT << 21) | (LINEAR_SLOT << 12));
    expect("linear_slot_free", l4[LINEAR_SLOT] & 1, 0);
    expect("linear_l4_self_map", set_l4_entry(LINEAR_SLOT, l4_ma | 0x21), 0);      /* P|A, read-only */
    expect("linear_reads_own_l4", self[256] == l4[256] && (self[LINEAR_SLOT] & ~0xfffUL) == l4_ma, 1);
    expect("linear_l4_self_map_rw", set_l4_entry(LINEAR_SLOT, l4_ma | 0x23), -EINVAL);
    expect("linear_still_read_only", l4[LINEAR_SLOT] & 2, 0);
    expect("linear_l4_unmap", set_l4_entry(LINEAR_SLOT, 0), 0);
}

void run_xtfgaps2(void)
{
    harness_init();
    check_iopl();
    check_linear_pagetables();
    check_cpuid_faulting();
    check_sysenter();
    check_stack_segment();
    check_ctl_ops();
    check_grant_mapping();
    check_user_syscall();
}
