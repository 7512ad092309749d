"""How a guest ended, as the exit status of `miniguest boot` (and of gdb's W packet for a debugged guest).

  0 poweroff   3 crash     4 reboot    5 suspend   6 watchdog   7 instruction budget exhausted
  8 hung (blocked with nothing to wake it, or waiting for console input that cannot come)   9 bad image
  1 other host error   2 usage   130 interrupted (Ctrl-C)   143 terminated (SIGTERM)
  (7 is also a reached virtual time limit, --max-time; the message says which limit)
"""
from __future__ import annotations

EXIT_POWEROFF = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CRASH = 3
EXIT_REBOOT = 4
EXIT_SUSPEND = 5
EXIT_WATCHDOG = 6
EXIT_BUDGET = 7
EXIT_HUNG = 8
EXIT_BAD_IMAGE = 9
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143           # 128 + SIGTERM
# The guest asked to shut down (SCHEDOP_shutdown): its reason -> the exit status.
SHUTDOWN_EXIT = {"poweroff": EXIT_POWEROFF, "reboot": EXIT_REBOOT, "suspend": EXIT_SUSPEND,
                 "crash": EXIT_CRASH, "watchdog": EXIT_WATCHDOG, "soft_reset": EXIT_REBOOT}
