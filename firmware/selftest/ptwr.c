/* Scenario `ptwr`: writable page tables (Xen's ro-page-fault.c). With VMASST_TYPE_writable_pagetables a
 * guest kernel may store straight into one of its live L1 tables through a read-only mapping: Xen emulates
 * the store -- mov, xchg, cmpxchg, cmpxchg8b, lock and/or, bts/btr, at most 8 bytes, naturally aligned --
 * validating the new entry exactly as mmu_update does, and the guest continues after the instruction.
 * A store Xen refuses (an entry mapping a frame the guest does not own, a page table writable, flags a
 * domU may not set, a misaligned or 16-byte store, any store without the assist) comes back as the
 * original #PF, with the entry unchanged. Results are `name = value ok|FAIL` lines. */
#include "selftest.h"

#define VMASST_CMD_enable 0
#define VMASST_TYPE_writable_pagetables 2
#define NO_FAULT (-1L)
#define EXC(vec, ec) (((long)(vec) << 16) | (long)(ec))
#define PF_WRITE EXC(14, 3)                 /* present, write (kernel mode: no user bit) */
#define ADDR_MASK 0x000ffffffffff000UL
#define P 0x1UL
#define RW 0x2UL
#define US 0x4UL
#define PCD 0x10UL
#define A 0x20UL
#define D 0x40UL
#define SLOT 100UL                          /* the L2 slot the test's L1 is hooked into */
#define CF 0x1UL                            /* flags an instruction defines */
#define ZF 0x40UL
#define ARITH 0x8d5UL                       /* CF PF AF ZF SF OF */
#define LOGIC 0x8c5UL                       /* the same without AF, which and/or/xor leave undefined */

/* The fault harness of hostile.c: #PF and #GP resume at ho_fixup, recording vector and error code. */
extern volatile unsigned long ho_vec, ho_ec, ho_fixup;
extern volatile long ho_seen;
extern char ho_pf[], ho_gp[];
volatile unsigned long pt_flags_out, pt_rdx_out;

/* Probes: rdi = the entry's address, rsi = the new value, rdx = the expected (old) value, rcx = a second
 * word (cmpxchg16b's high half); rax = the result; the flags and rdx after the store in pt_flags_out and
 * pt_rdx_out. Each has a
 * `_fix` label right after its store, where a fault resumes. */
#define PROBE(name, body)                                                                   \
    __asm__(".pushsection .text\n" #name ":\n\tpush %rbx\n\t" body "\n" #name "_fix:\n\t"   \
            "pushf\n\tpop %rbx\n\tmov %rbx, pt_flags_out(%rip)\n\tmov %rdx, pt_rdx_out(%rip)\n\t"     \
            "pop %rbx\n\tret\n.popsection");                                                 \
    extern char name[], name##_fix[]
PROBE(pt_mov64, "mov %rsi, %rax\n\tmov %rsi, (%rdi)");
PROBE(pt_mov32, "mov %esi, (%rdi)");
PROBE(pt_movimm, "movq $0, (%rdi)");
PROBE(pt_xchg, "mov %rsi, %rax\n\txchg %rax, (%rdi)");
PROBE(pt_cmpxchg, "mov %rdx, %rax\n\tlock cmpxchg %rsi, (%rdi)");
PROBE(pt_cmpxchg8b, "mov %rdx, %rax\n\tmov %rdx, %r8\n\tshr $32, %r8\n\tmov %r8, %rdx\n\t"
                    "mov %rsi, %rbx\n\tmov %rsi, %rcx\n\tshr $32, %rcx\n\tlock cmpxchg8b (%rdi)");
PROBE(pt_cmpxchg16b, "mov %rdx, %rax\n\tmov %rcx, %rdx\n\tmov %rsi, %rbx\n\tmov %rsi, %rcx\n\t"
                     "lock cmpxchg16b (%rdi)");
PROBE(pt_andb, "mov %rsi, %rax\n\tlock andb %sil, (%rdi)");
PROBE(pt_orq, "lock orq %rsi, (%rdi)");
PROBE(pt_btr, "lock btrq $1, (%rdi)");
PROBE(pt_bts_reg, "lock btsq %rsi, (%rdi)");
PROBE(pt_btc_reg, "lock btcq %rsi, (%rdi)");
PROBE(pt_xorq, "lock xorq %rsi, (%rdi)");
PROBE(pt_addq, "lock addq %rsi, (%rdi)");
PROBE(pt_subq, "lock subq %rsi, (%rdi)");

static long probe(char *fn, char *fix, unsigned long addr, unsigned long val, unsigned long old,
                  unsigned long high, unsigned long *rax)
{
    unsigned long out;
    ho_seen = 0;
    ho_fixup = (unsigned long)fix;
    __asm__ volatile("call *%[fn]"
                     : "=a"(out), "+D"(addr), "+S"(val), "+d"(old), "+c"(high)
                     : [fn] "r"(fn)
                     : "memory", "r8", "r9", "r10", "r11");
    ho_fixup = 0;
    if (rax)
        *rax = out;
    return ho_seen ? EXC(ho_vec, ho_ec) : NO_FAULT;
}

static void expect_exc(const char *what, long got, long want)
{
    if (got == want)
        printk("%s = %s ok\n", what, got == NO_FAULT ? "emulated" : "#PF");
    else {
        printk("%s = %lx FAIL (want %lx)\n", what, got, want);
        failures++;
    }
}

/* Run a probe on an ordinary writable word holding the entry's value (the CPU executes it) and then on the
 * entry (Xen emulates it): the stored value, rax, rdx and the flags the instruction defines (`flags`) must
 * be the same. */
static unsigned long scratch[2] __attribute__((aligned(16)));

static void same_as_cpu(const char *what, char *fn, char *fix, unsigned long flags, unsigned long *entry,
                        unsigned long val, unsigned long old, unsigned long high)
{
    unsigned long rax_cpu = 0, rax_emul = 0;
    scratch[0] = entry[0];
    scratch[1] = entry[1];
    long cpu = probe(fn, fix, (unsigned long)scratch, val, old, high, &rax_cpu);
    unsigned long flags_cpu = pt_flags_out & flags, rdx_cpu = pt_rdx_out;
    long emul = probe(fn, fix, (unsigned long)entry, val, old, high, &rax_emul);
    unsigned long adjusted = scratch[0] & 1 ? scratch[0] | US : scratch[0];      /* Xen adds _PAGE_USER */
    int same = cpu == NO_FAULT && emul == NO_FAULT && entry[0] == adjusted && rax_emul == rax_cpu &&
               (pt_flags_out & flags) == flags_cpu && pt_rdx_out == rdx_cpu;
    if (same)
        printk("%s = same ok\n", what);
    else {
        printk("%s = differs FAIL (cpu %lx rax %lx flags %lx, emulated %lx rax %lx flags %lx)\n", what, adjusted,
               rax_cpu, flags_cpu, entry[0], rax_emul, pt_flags_out & flags);
        failures++;
    }
}

static long update(unsigned long ptr, unsigned long val)
{
    struct mmu_update u = { .ptr = ptr, .val = val };
    return HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF);
}

static unsigned long *table_of(unsigned long entry)
{
    return mfn_to_virt((entry & ADDR_MASK) >> PAGE_SHIFT);
}

void run_ptwr(void)
{
    unsigned long pt_end = si->pt_base + si->nr_pt_frames * PAGE_SIZE;
    unsigned long *l1 = (unsigned long *)(pt_end + 56 * PAGE_SIZE);      /* becomes a live L1 */
    unsigned char *data = (unsigned char *)(pt_end + 57 * PAGE_SIZE);     /* a page to map through it */
    unsigned char *data2 = (unsigned char *)(pt_end + 58 * PAGE_SIZE);
    unsigned long *l4 = (unsigned long *)si->pt_base;
    unsigned long *l2 = table_of(table_of(l4[0])[0]);
    unsigned long l1_ma = virt_to_mfn(l1) << PAGE_SHIFT, l2_ma = virt_to_mfn(l2) << PAGE_SHIFT;
    unsigned long d_ma = virt_to_mfn(data) << PAGE_SHIFT, d2_ma = virt_to_mfn(data2) << PAGE_SHIFT;
    unsigned long xen_ma = l4[256] & ADDR_MASK;                     /* Xen's M2P L3: not ours */
    unsigned long *window = (unsigned long *)(SLOT << 21);            /* what the live L1 maps */
    unsigned long rax = 0;
    struct trap_info traps[] = { { 13, 0, FLAT_KERNEL_CS, (unsigned long)ho_gp },
                                 { 14, 0, FLAT_KERNEL_CS, (unsigned long)ho_pf }, { 0, 0, 0, 0 } };

    expect("trap_table", HYPERVISOR_set_trap_table(traps), 0);
    memset(l1, 0, PAGE_SIZE);
    memset(data, 0x11, PAGE_SIZE);
    memset(data2, 0x22, PAGE_SIZE);
    expect("l1_read_only", HYPERVISOR_update_va_mapping((unsigned long)l1, l1_ma | P | A, UVMF_INVLPG), 0);
    expect("l1_hooked", update(l2_ma + SLOT * 8, l1_ma | P | RW | A | D), 0);

    /* Without the assist, a store into the live table is the guest's #PF. */
    expect_exc("no_assist_store", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[0], d_ma | P | RW | A, 0, 0, 0),
               PF_WRITE);
    expect("no_assist_entry_unchanged", l1[0], 0);
    expect("assist", HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_writable_pagetables), 0);

    /* mov: a new entry, validated and adjusted (Xen adds _PAGE_USER), usable at once. */
    expect_exc("mov64", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[0], d_ma | P | RW | A | D, 0, 0, 0),
               NO_FAULT);
    expect("mov64_entry", l1[0], d_ma | P | RW | US | A | D);
    expect("mov64_maps", *(volatile unsigned char *)&window[0], 0x11);
    window[1] = 0x1234;                                      /* writable through it */
    expect("mov64_writable", ((unsigned long *)data)[1], 0x1234);
    /* A 4-byte store into the low half: merged with the high half Xen reads. */
    expect_exc("mov32", probe(pt_mov32, pt_mov32_fix, (unsigned long)&l1[0], (d_ma | P | A) & 0xffffffff, 0, 0, 0),
               NO_FAULT);
    expect("mov32_entry", l1[0], d_ma | P | US | A);
    expect_exc("mov32_read_only", probe(pt_mov64, pt_mov64_fix, (unsigned long)&window[2], 5, 0, 0, 0), PF_WRITE);
    /* Accessed and dirty are what the guest writes (no preserve), until the CPU sets them again. */
    expect_exc("mov_no_ad", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[0], d_ma | P | RW, 0, 0, 0), NO_FAULT);
    expect("mov_no_ad_entry", l1[0], d_ma | P | RW | US);
    window[3] = 7;
    expect("cpu_sets_ad", l1[0] & (A | D), A | D);
    /* An immediate store: the entry cleared. */
    expect_exc("mov_imm", probe(pt_movimm, pt_movimm_fix, (unsigned long)&l1[0], 0, 0, 0, 0), NO_FAULT);
    expect("mov_imm_entry", l1[0], 0);

    /* xchg returns the old entry. */
    expect_exc("xchg", probe(pt_xchg, pt_xchg_fix, (unsigned long)&l1[1], d2_ma | P | RW | A, 0, 0, &rax),
               NO_FAULT);
    expect("xchg_old", rax, 0);
    expect_exc("xchg_back", probe(pt_xchg, pt_xchg_fix, (unsigned long)&l1[1], d_ma | P | A, 0, 0, &rax), NO_FAULT);
    expect("xchg_back_old", rax, d2_ma | P | RW | US | A);
    expect("xchg_entry", l1[1], d_ma | P | US | A);

    /* cmpxchg: stored when the entry matches (ZF set), else the current entry comes back (ZF clear). */
    unsigned long cur = l1[1];
    expect_exc("cmpxchg", probe(pt_cmpxchg, pt_cmpxchg_fix, (unsigned long)&l1[1], d2_ma | P | A, cur, 0, &rax),
               NO_FAULT);
    expect("cmpxchg_zf", (pt_flags_out >> 6) & 1, 1);
    expect("cmpxchg_entry", l1[1], d2_ma | P | US | A);
    expect_exc("cmpxchg_mismatch", probe(pt_cmpxchg, pt_cmpxchg_fix, (unsigned long)&l1[1], 0, cur, 0, &rax),
               NO_FAULT);
    expect("cmpxchg_mismatch_zf", (pt_flags_out >> 6) & 1, 0);
    expect("cmpxchg_mismatch_rax", rax, d2_ma | P | US | A);
    expect("cmpxchg_mismatch_entry", l1[1], d2_ma | P | US | A);

    /* cmpxchg8b: the same through edx:eax / ecx:ebx. */
    cur = l1[1];
    expect_exc("cmpxchg8b", probe(pt_cmpxchg8b, pt_cmpxchg8b_fix, (unsigned long)&l1[1], d_ma | P | RW | A, cur, 0,
                                  &rax), NO_FAULT);
    expect("cmpxchg8b_zf", (pt_flags_out >> 6) & 1, 1);
    expect("cmpxchg8b_entry", l1[1], d_ma | P | RW | US | A);
    expect_exc("cmpxchg8b_mismatch", probe(pt_cmpxchg8b, pt_cmpxchg8b_fix, (unsigned long)&l1[1], 0, cur, 0, &rax),
               NO_FAULT);
    expect("cmpxchg8b_mismatch_zf", (pt_flags_out >> 6) & 1, 0);
    expect("cmpxchg8b_mismatch_value", (pt_rdx_out << 32) | (rax & 0xffffffff), d_ma | P | RW | US | A);

    /* cmpxchg16b: a mismatch only reads (emulated); a match would be a 16-byte store, which Xen refuses. */
    expect_exc("cmpxchg16b_mismatch", probe(pt_cmpxchg16b, pt_cmpxchg16b_fix, (unsigned long)&l1[0], 1, 5, 6, &rax),
               NO_FAULT);
    expect("cmpxchg16b_mismatch_rax", rax, l1[0]);
    expect_exc("cmpxchg16b_match", probe(pt_cmpxchg16b, pt_cmpxchg16b_fix, (unsigned long)&l1[0], 1, l1[0], l1[1],
                                         0), PF_WRITE);
    expect("cmpxchg16b_entries_unchanged", l1[0] == 0 && l1[1] == (d_ma | P | RW | US | A), 1);

    /* Read-modify-write: lock and (a byte: clearing RW), lock or, bit tests. */
    expect_exc("lock_andb", probe(pt_andb, pt_andb_fix, (unsigned long)&l1[1], (unsigned char)~RW, 0, 0, 0),
               NO_FAULT);
    expect("lock_andb_entry", l1[1], d_ma | P | US | A);
    expect_exc("lock_orq", probe(pt_orq, pt_orq_fix, (unsigned long)&l1[1], RW | D, 0, 0, 0), NO_FAULT);
    expect("lock_orq_entry", l1[1], d_ma | P | RW | US | A | D);
    expect_exc("lock_btr", probe(pt_btr, pt_btr_fix, (unsigned long)&l1[1], 0, 0, 0, 0), NO_FAULT);
    expect("lock_btr_cf", pt_flags_out & 1, 1);
    expect("lock_btr_entry", l1[1], d_ma | P | US | A | D);
    expect_exc("lock_bts_reg", probe(pt_bts_reg, pt_bts_reg_fix, (unsigned long)&l1[1], 1, 0, 0, 0), NO_FAULT);
    expect("lock_bts_cf", pt_flags_out & 1, 0);
    expect("lock_bts_entry", l1[1], d_ma | P | RW | US | A | D);

    /* Arithmetic read-modify-writes, with the flags the CPU would leave. */
    expect_exc("lock_xorq", probe(pt_xorq, pt_xorq_fix, (unsigned long)&l1[1], RW, 0, 0, 0), NO_FAULT);
    expect("lock_xorq_entry", l1[1], d_ma | P | US | A | D);
    expect("lock_xorq_flags", pt_flags_out & 0x8d5, 0x04 * (__builtin_parity((d_ma | P | US | A | D) & 0xff) == 0));
    expect_exc("lock_addq", probe(pt_addq, pt_addq_fix, (unsigned long)&l1[1], d2_ma - d_ma, 0, 0, 0), NO_FAULT);
    expect("lock_addq_entry", l1[1], d2_ma | P | US | A | D);
    expect("lock_addq_cf_zf_sf", pt_flags_out & 0xc1, 0);
    expect_exc("lock_subq", probe(pt_subq, pt_subq_fix, (unsigned long)&l1[1], l1[1], 0, 0, 0), NO_FAULT);
    expect("lock_subq_entry", l1[1], 0);
    expect("lock_subq_zf_pf", pt_flags_out & 0x8d5, 0x44);
    /* A register bit offset reaches past the operand: bit 65 from l1[1] is bit 1 of l1[2] (not present). */
    expect_exc("lock_btc_next_entry", probe(pt_btc_reg, pt_btc_reg_fix, (unsigned long)&l1[1], 65, 0, 0, 0),
               NO_FAULT);
    expect("lock_btc_next_entry_value", l1[2], RW);
    expect("lock_btc_cf", pt_flags_out & 1, 0);
    expect_exc("lock_btc_back", probe(pt_btc_reg, pt_btc_reg_fix, (unsigned long)&l1[1], 65, 0, 0, 0), NO_FAULT);
    expect("lock_btc_back_value", l1[2] == 0 && (pt_flags_out & 1), 1);
    expect_exc("restore_entry_1", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1], d_ma | P | RW | A | D, 0, 0,
                                        0), NO_FAULT);

    /* Each form against the CPU itself. */
    unsigned long *e = &l1[1];
    same_as_cpu("cpu_mov64", pt_mov64, pt_mov64_fix, 0, e, d2_ma | P | A, 0, 0);
    same_as_cpu("cpu_xchg", pt_xchg, pt_xchg_fix, 0, e, d_ma | P | RW | A, 0, 0);
    same_as_cpu("cpu_cmpxchg_hit", pt_cmpxchg, pt_cmpxchg_fix, ARITH, e, d2_ma | P | A | D, l1[1], 0);
    same_as_cpu("cpu_cmpxchg_miss", pt_cmpxchg, pt_cmpxchg_fix, ARITH, e, 0, 12345, 0);
    same_as_cpu("cpu_cmpxchg8b_hit", pt_cmpxchg8b, pt_cmpxchg8b_fix, ZF, e, d_ma | P | A, l1[1], 0);
    same_as_cpu("cpu_cmpxchg8b_miss", pt_cmpxchg8b, pt_cmpxchg8b_fix, ZF, e, 0, 77, 0);
    same_as_cpu("cpu_andb", pt_andb, pt_andb_fix, LOGIC, e, 0xdf, 0, 0);
    same_as_cpu("cpu_orq", pt_orq, pt_orq_fix, LOGIC, e, RW | D, 0, 0);
    same_as_cpu("cpu_xorq", pt_xorq, pt_xorq_fix, LOGIC, e, A | D, 0, 0);
    same_as_cpu("cpu_addq", pt_addq, pt_addq_fix, ARITH, e, d2_ma - d_ma, 0, 0);
    same_as_cpu("cpu_subq", pt_subq, pt_subq_fix, ARITH, e, d2_ma - d_ma, 0, 0);
    same_as_cpu("cpu_btr", pt_btr, pt_btr_fix, CF, e, 0, 0, 0);
    same_as_cpu("cpu_bts_reg", pt_bts_reg, pt_bts_reg_fix, CF, e, 1, 0, 0);
    same_as_cpu("cpu_btc_reg", pt_btc_reg, pt_btc_reg_fix, CF, e, 5, 0, 0);
    same_as_cpu("cpu_movimm", pt_movimm, pt_movimm_fix, 0, e, 0, 0, 0);
    expect_exc("restore_entry_1_again", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1], d_ma | P | RW | A | D,
                                              0, 0, 0), NO_FAULT);

    /* Entries Xen refuses: the guest gets the #PF and the entry stays as it was. */
    unsigned long before = l1[1];
    expect_exc("refused_xen_frame", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1], xen_ma | P | A, 0, 0, 0),
               PF_WRITE);
    expect_exc("refused_table_writable", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1], l1_ma | P | RW | A,
                                               0, 0, 0), PF_WRITE);
    expect_exc("refused_l4_writable", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1],
                                            (virt_to_mfn(l4) << PAGE_SHIFT) | P | RW | A, 0, 0, 0), PF_WRITE);
    expect_exc("refused_pcd", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1], d_ma | P | PCD, 0, 0, 0),
               PF_WRITE);
    expect_exc("refused_past_ram", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1], (0xfffffUL << 12) | P, 0, 0,
                                         0), PF_WRITE);
    expect_exc("refused_xen_frame_by_or", probe(pt_orq, pt_orq_fix, (unsigned long)&l1[2], xen_ma | P, 0, 0, 0),
               PF_WRITE);
    expect_exc("refused_misaligned", probe(pt_mov64, pt_mov64_fix, (unsigned long)&l1[1] + 4, 0, 0, 0, 0), PF_WRITE);
    expect("refused_entries_unchanged", l1[1] == before && l1[2] == 0, 1);
    /* A read-only page that is no page table: not emulated. */
    expect("data_read_only", HYPERVISOR_update_va_mapping((unsigned long)data2, d2_ma | P | A, UVMF_INVLPG), 0);
    expect_exc("store_to_plain_read_only", probe(pt_mov64, pt_mov64_fix, (unsigned long)data2, 1, 0, 0, 0), PF_WRITE);
    expect("data_writable_again", HYPERVISOR_update_va_mapping((unsigned long)data2, d2_ma | P | RW | A, UVMF_INVLPG),
           0);

    /* Unhook: the table is devalidated, its references dropped; the pages are plain memory again. */
    expect_exc("clear_entry_1", probe(pt_movimm, pt_movimm_fix, (unsigned long)&l1[1], 0, 0, 0, 0), NO_FAULT);
    expect("l1_unhooked", update(l2_ma + SLOT * 8, 0), 0);
    expect("l1_writable_again", HYPERVISOR_update_va_mapping((unsigned long)l1, l1_ma | P | RW | A, UVMF_INVLPG), 0);
}
