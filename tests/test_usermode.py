"""Guest user mode: HYPERVISOR_iret to RPL 3, a syscall into the registered syscall callback, and a trap
from user mode delivered on the stack_switch stack."""
from __future__ import annotations

from guestlib import facts, selftest


def test_user_mode_syscall_and_trap():
    dom = selftest("usermode")
    text = dom.console.text
    f = facts(text)
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text
    for key in ("syscall_on_kernel_stack", "syscall_frame_rsp_is_user", "syscall_rcx_is_return_rip",
                "int3_rip_after_insn"):
        assert f[key] == "1", key
    assert f["syscall_frame_cs_rpl"] == "3" and f["int3_from_user_cs_rpl"] == "3"
    assert f["user_result"] == str(0x2222) and f["int3_user_result_seen"] == str(0x2222)
    assert "usermode: back in the kernel for good" in text
    assert dom.vcpus[0].kernel_mode
    dom.close()
