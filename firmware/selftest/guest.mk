selftest_SRCS   := selftest/selftest.c selftest/layout.c selftest/badptr.c selftest/mmu.c selftest/bench.c selftest/entry.S selftest/usermode.c selftest/user_entry.S selftest/evtchn.c selftest/hcalls.c selftest/echo.c selftest/segments.c selftest/xtfgaps.c selftest/xtfgaps2.c selftest/balloon.c selftest/minigaps.c selftest/hostile.c selftest/gntcopy.c selftest/ptwr.c
selftest_BASE   := 0x400000
selftest_DEFS   := -DNOTES_ALLOC -DPADDR_OFFSET=0x400000
selftest_CFLAGS :=
selftest_OS     := miniguest-selftest
selftest_DEST   := tests
