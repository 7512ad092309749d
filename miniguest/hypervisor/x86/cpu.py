"""x86 definitions the PV code shares: EFLAGS bits, and the fixed control-register values a 64-bit PV guest
sees (Xen's x86-defns.h and the PV parts of its %cr0/%cr4/EFER handling)."""
from __future__ import annotations

EFLAGS_TF = 1 << 8
EFLAGS_IF = 1 << 9
EFLAGS_DF = 1 << 10
EFLAGS_IOPL = 3 << 12
EFLAGS_NT = 1 << 14
EFLAGS_RF = 1 << 16
EFLAGS_VM = 1 << 17
EFLAGS_AC = 1 << 18
EFLAGS_CLEAR_ON_BOUNCE = EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM | EFLAGS_AC
CR0_GUEST = 0x80050033        # PG | AM | WP | NE | ET | MP | PE
CR4_GUEST = 0x000006A0        # OSXMMEXCPT | OSFXSR | PGE | PAE
EFER_GUEST = 0xD01            # NXE | LMA | LME | SCE
CR4_DE = 1 << 3               # the %cr4 bits a PV guest controls here (Xen's pv_fixup_guest_cr4)
CR4_OSXSAVE = 1 << 18
PV_CR4_GUEST_MASK = CR4_DE | CR4_OSXSAVE
CR4_REAL = CR4_GUEST | CR4_OSXSAVE   # the CPU's own %cr4: Xen keeps OSXSAVE on (XCR0 is per vCPU)
DR6_DEFAULT = 0xFFFF0FF0      # %dr6 / %dr7 as a vCPU starts (Xen's X86_DR6_DEFAULT / X86_DR7_DEFAULT)
DR7_DEFAULT = 0x400
