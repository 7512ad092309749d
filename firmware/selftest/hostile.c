/* Scenario `hostile`: a guest attacking Xen through its page tables, the ways issue 9 found that worked,
 * each reported as `name = result ok|FAIL` with the errno (or the fault) Xen answers:
 *  1. a page table that maps itself writable, pinned as an L1 (and one level up: an L2 whose L1 maps the
 *     L2 writable) -- with it the guest would hold a writable live page table and could map anything;
 *  2. Xen-heap pages (shared_info, a grant-table frame) pinned as page tables, or named by an L2 entry --
 *     the hypervisor's own writes to them would then be page-table entries;
 *  3. a read-only linear (self-referencing) L4 entry, through which Xen's L4 slots read as guest tables:
 *     only what Xen exposes to a PV guest may be readable (the read-only M2P's directory, superpages),
 *     nothing writable, and Xen's per-domain area (GDT, entry stub, stack) not at all.
 * Then the guest carries on (a last hypercall, a clean poweroff). */
#include "selftest.h"

#define EPERM 1
#define EBUSY 16
#define EINVAL 22
#define NO_FAULT (-1L)
#define EXC(vec, ec) (((long)(vec) << 16) | (long)(ec))
#define PTE_P 0x1UL
#define PTE_RW 0x2UL
#define PTE_A 0x20UL
#define PTE_D 0x40UL
#define PTE_PSE 0x80UL
#define ADDR_MASK 0x000ffffffffff000UL
#define RW (PTE_P | PTE_RW | PTE_A | PTE_D)
#define RO (PTE_P | PTE_A)
#define LINEAR 10UL                     /* the L4 slot used for the linear entry */
#define M2P_SLOT 256UL
#define PERDOMAIN_SLOT 260UL

/* -- a fault harness: a probe is one access followed by `ret`; a fault in it resumes at the `ret` -------- */
volatile unsigned long ho_vec, ho_ec, ho_fixup;
volatile long ho_seen;

__attribute__((used)) void ho_record(unsigned long *frame, unsigned long vec, unsigned long has_ec)
{
    unsigned long *f = frame + 2;             /* Xen's frame: rcx, r11, [error code], rip, cs, rflags ... */
    ho_ec = has_ec ? *f++ : 0;
    ho_vec = vec;
    ho_seen++;
    if (!ho_fixup) {
        printk("hostile: unexpected exception %lu[%lx] at %lx\n", vec, ho_ec, f[0]);
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    f[0] = ho_fixup;
}

#define HO_STUB(name, vec)                                                                  \
    __asm__(".pushsection .text\n\t.globl " #name "\n" #name ":\n\t"                        \
            "push %rax\n\tpush %rdx\n\tpush %rsi\n\tpush %rdi\n\tpush %r8\n\tpush %r9\n\t"   \
            "push %r10\n\tpush %rbp\n\t"                                                    \
            "lea 64(%rsp), %rdi\n\tmov $" #vec ", %esi\n\tmov $1, %edx\n\t"                 \
            "mov %rsp, %rbp\n\tand $-16, %rsp\n\tcall ho_record\n\tmov %rbp, %rsp\n\t"      \
            "pop %rbp\n\tpop %r10\n\tpop %r9\n\tpop %r8\n\tpop %rdi\n\tpop %rsi\n\t"        \
            "pop %rdx\n\tpop %rax\n\tpop %rcx\n\tpop %r11\n\tadd $8, %rsp\n\t"              \
            "pushq $0\n\tjmp hypercall_page + 23 * 32\n.popsection")
HO_STUB(ho_pf, 14);
HO_STUB(ho_gp, 13);
extern char ho_pf[], ho_gp[];

__asm__(".pushsection .text\n"
        "ho_load:\n\tmov (%rdi), %rax\nho_load_end:\n\tret\n"
        "ho_store:\n\tmov %rsi, (%rdi)\nho_store_end:\n\tret\n.popsection");
extern char ho_load[], ho_load_end[], ho_store[], ho_store_end[];

/* Read 8 bytes at va: NO_FAULT (value in *out) or EXC(vector, error code). */
static long try_load(unsigned long va, unsigned long *out)
{
    unsigned long rax = 0;
    ho_seen = 0;
    ho_fixup = (unsigned long)ho_load_end;
    __asm__ volatile("call ho_load" : "=a"(rax), "+D"(va) : : "memory");
    ho_fixup = 0;
    if (ho_seen)
        return EXC(ho_vec, ho_ec);
    *out = rax;
    return NO_FAULT;
}

static long try_store(unsigned long va, unsigned long value)
{
    ho_seen = 0;
    ho_fixup = (unsigned long)ho_store_end;
    __asm__ volatile("call ho_store" : "+D"(va), "+S"(value) : : "memory", "rax");
    ho_fixup = 0;
    return ho_seen ? EXC(ho_vec, ho_ec) : NO_FAULT;
}

/* `name = #PF[3] ok`: a fault (vector, error code) or `none`, against the one expected. */
static void expect_exc(const char *what, long got, long want)
{
    char g[24], w[24];
    static const char *const names[] = { [13] = "#GP", [14] = "#PF" };
    long v[2] = { got, want };
    char *out[2] = { g, w };
    for (int i = 0; i < 2; i++) {
        if (v[i] == NO_FAULT)
            snprintf(out[i], sizeof(g), "none");
        else
            snprintf(out[i], sizeof(g), "%s[%ld]", names[(v[i] >> 16) & 15] ? names[(v[i] >> 16) & 15] : "#?",
                     v[i] & 0xffff);
    }
    if (got == want)
        printk("%s = %s ok\n", what, g);
    else {
        printk("%s = %s FAIL (want %s)\n", what, g, w);
        failures++;
    }
}

/* -- page-table requests ------------------------------------------------------------------------------- */
static unsigned long ma_of(const void *va)
{
    return virt_to_mfn(va) << PAGE_SHIFT;
}

static long pin(int level, unsigned long mfn)
{
    struct mmuext_op op = { .cmd = MMUEXT_PIN_L1_TABLE + level - 1, .arg1.mfn = mfn };
    return HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF);
}

static long unpin(unsigned long mfn)
{
    struct mmuext_op op = { .cmd = MMUEXT_UNPIN_TABLE, .arg1.mfn = mfn };
    return HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF);
}

static long update(unsigned long ptr, unsigned long val)
{
    struct mmu_update u = { .ptr = ptr, .val = val };
    return HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF);
}

static long set_mapping(void *va, unsigned long pte)
{
    return HYPERVISOR_update_va_mapping((unsigned long)va, pte, UVMF_INVLPG);
}

static unsigned long linear_va(unsigned long a, unsigned long b, unsigned long c, unsigned long d)
{
    unsigned long va = (a << 39) | (b << 30) | (c << 21) | (d << 12);
    return va & (1UL << 47) ? va | 0xffff000000000000UL : va;
}

void run_hostile(void)
{
    unsigned long pt_end = si->pt_base + si->nr_pt_frames * PAGE_SIZE;
    unsigned long *page[4];                         /* free pages past the boot stack, mapped writable */
    unsigned long *l4 = (unsigned long *)si->pt_base;
    unsigned long l4_ma = ma_of(l4), value = 0;
    struct trap_info traps[] = { { 13, 0, FLAT_KERNEL_CS, (unsigned long)ho_gp },
                                 { 14, 0, FLAT_KERNEL_CS, (unsigned long)ho_pf }, { 0, 0, 0, 0 } };

    for (int i = 0; i < 4; i++)
        page[i] = (unsigned long *)(pt_end + (40 + i) * PAGE_SIZE);
    expect("trap_table", HYPERVISOR_set_trap_table(traps), 0);

    /* 1. A frame whose entry 0 maps it read-write, its own writable mapping dropped, pinned as an L1: while
     *    Xen validates it, it is already an L1, so the writable reference its entry needs is refused. */
    unsigned long f = ma_of(page[0]);
    memset(page[0], 0, PAGE_SIZE);
    page[0][0] = f | RW;
    expect("unmap_candidate", set_mapping(page[0], 0), 0);
    expect("attack1_l1_maps_itself_writable", pin(1, f >> PAGE_SHIFT), -EBUSY);
    expect("attack1_frame_still_plain_memory", set_mapping(page[0], f | RW), 0);
    page[0][1] = 0x5a;                               /* writable again: it never became a page table */
    expect("attack1_write_back", page[0][1], 0x5a);

    /* ... one level up: an L2 (A) whose L1 (B) maps A writable. */
    unsigned long a = ma_of(page[1]), b = ma_of(page[2]);
    memset(page[1], 0, PAGE_SIZE);
    memset(page[2], 0, PAGE_SIZE);
    page[1][0] = b | RW;
    page[2][0] = a | RW;
    expect("unmap_l2", set_mapping(page[1], 0), 0);
    expect("unmap_l1", set_mapping(page[2], 0), 0);
    expect("attack1_l2_whose_l1_maps_it_writable", pin(2, a >> PAGE_SHIFT), -EBUSY);
    /* B pinned first holds a writable reference on A, which then cannot become an L2 ("Bad type"). */
    expect("attack1_pin_the_l1_first", pin(1, b >> PAGE_SHIFT), 0);
    expect("attack1_then_the_l2", pin(2, a >> PAGE_SHIFT), -EINVAL);
    expect("attack1_map_the_l1_writable", set_mapping(page[2], b | RW), -EBUSY);
    expect("attack1_unpin_the_l1", unpin(b >> PAGE_SHIFT), 0);
    expect("remap_l2", set_mapping(page[1], a | RW), 0);
    expect("remap_l1", set_mapping(page[2], b | RW), 0);

    /* 2. Xen-heap pages: shared_info and a grant-table frame, pinned at every level, or named by an L2. */
    unsigned long grant_frames[1] = { 0 };
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1, .frame_list = grant_frames };
    expect("grant_setup", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1) || setup.status, 0);
    unsigned long shared = si->shared_info >> PAGE_SHIFT;
    static const char *const pin_shared[4] = { "attack2_pin_shared_info_l1", "attack2_pin_shared_info_l2",
                                               "attack2_pin_shared_info_l3", "attack2_pin_shared_info_l4" };
    static const char *const pin_grant[4] = { "attack2_pin_grant_frame_l1", "attack2_pin_grant_frame_l2",
                                              "attack2_pin_grant_frame_l3", "attack2_pin_grant_frame_l4" };
    for (int level = 1; level <= 4; level++) {
        expect(pin_shared[level - 1], pin(level, shared), -EINVAL);
        expect(pin_grant[level - 1], pin(level, grant_frames[0]), -EINVAL);
    }
    unsigned long l2 = ma_of(page[3]);
    memset(page[3], 0, PAGE_SIZE);
    expect("unmap_l2_for_attack2", set_mapping(page[3], 0), 0);
    expect("pin_empty_l2", pin(2, l2 >> PAGE_SHIFT), 0);
    expect("attack2_l2_entry_names_shared_info", update(l2, si->shared_info | RW), -EINVAL);
    expect("attack2_l2_entry_names_grant_frame", update(l2, (grant_frames[0] << PAGE_SHIFT) | RO), -EINVAL);
    expect("shared_info_still_mappable", set_mapping(page[0], si->shared_info | RW), 0);
    expect("shared_info_unmap", set_mapping(page[0], f | RW), 0);
    expect("unpin_l2", unpin(l2 >> PAGE_SHIFT), 0);
    expect("remap_l2_for_attack2", set_mapping(page[3], l2 | RW), 0);

    /* Xen's own frames are not the domain's: not mappable, not pinnable. */
    unsigned long m2p_l3 = l4[M2P_SLOT] & ADDR_MASK, perdomain_l3 = l4[PERDOMAIN_SLOT] & ADDR_MASK;
    expect("xen_m2p_l3_map", set_mapping(page[0], m2p_l3 | RO), -EBUSY);
    expect("xen_perdomain_l3_map", set_mapping(page[0], perdomain_l3 | RO), -EBUSY);
    expect("xen_perdomain_l3_pin", pin(1, perdomain_l3 >> PAGE_SHIFT), -EINVAL);

    /* 3. A read-only linear L4 entry: Xen's L4 slots, read through it as lower-level tables. */
    expect("attack3_linear_l4_entry", update(l4_ma + LINEAR * 8, l4_ma | RO), 0);
    unsigned long self = linear_va(LINEAR, LINEAR, LINEAR, LINEAR);       /* the L4 page itself */
    expect("attack3_linear_reads_own_l4",
           try_load(self + LINEAR * 8, &value) == NO_FAULT && value == (l4_ma | RO | 4) && l4[LINEAR] == value, 1);
    /* The per-domain area (GDT, entry stub, Xen's stack) is supervisor-only at the L4 entry: a fault. */
    expect_exc("attack3_perdomain_read", try_load(linear_va(LINEAR, LINEAR, LINEAR, PERDOMAIN_SLOT), &value),
           EXC(14, 1));
    expect_exc("attack3_perdomain_l2_read", try_load(linear_va(LINEAR, LINEAR, PERDOMAIN_SLOT, 0), &value),
           EXC(14, 1));
    /* The M2P's directory is what Xen exposes (read-only, user): readable, not writable; below it there is
     * no L1 of Xen's, only 2 MiB superpages of the M2P itself. */
    long l3_read = try_load(linear_va(LINEAR, LINEAR, LINEAR, M2P_SLOT), &value);
    expect_exc("attack3_m2p_l3_read", l3_read, NO_FAULT);
    expect_exc("attack3_m2p_l3_store", try_store(linear_va(LINEAR, LINEAR, LINEAR, M2P_SLOT), 0), EXC(14, 3));
    expect_exc("attack3_m2p_l2_read", try_load(linear_va(LINEAR, LINEAR, M2P_SLOT, 0), &value), NO_FAULT);
    expect("attack3_m2p_l2_maps_superpages", (value & (PTE_P | PTE_PSE)) == (PTE_P | PTE_PSE), 1);
    expect_exc("attack3_m2p_data_read", try_load(linear_va(LINEAR, M2P_SLOT, 0, 0), &value), NO_FAULT);
    expect("attack3_m2p_data_is_the_m2p", value == ((unsigned long *)MACH2PHYS_VIRT_START)[0], 1);
    expect_exc("attack3_m2p_data_store", try_store(linear_va(LINEAR, M2P_SLOT, 0, 0), 0), EXC(14, 3));
    expect_exc("attack3_own_l4_store", try_store(self, 0), EXC(14, 3));
    expect("attack3_linear_writable", update(l4_ma + LINEAR * 8, l4_ma | RW), -EINVAL);
    expect("attack3_linear_remove", update(l4_ma + LINEAR * 8, 0), 0);

    /* Still here: the domain runs on. */
    expect("still_running", HYPERVISOR_xen_version(0, 0) > 0, 1);
}
