"""public/sched.h."""
from __future__ import annotations

SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SCHEDOP_pin_override = 7

SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5
SHUTDOWN_NAMES = {SHUTDOWN_poweroff: "poweroff", SHUTDOWN_reboot: "reboot", SHUTDOWN_suspend: "suspend",
                  SHUTDOWN_crash: "crash", SHUTDOWN_watchdog: "watchdog", SHUTDOWN_soft_reset: "soft_reset"}

# sched_op_compat (hypercall 6) uses the same numbers for yield/block/shutdown, with the reason in arg 2.
