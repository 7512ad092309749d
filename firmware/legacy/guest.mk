# The hello guest again, announcing itself with the legacy `__xen_guest` string instead of ELF notes.
legacy_SRCS   := hello/hello.c
legacy_BASE   := 0xffffffff80000000
legacy_DEFS   := -DLEGACY_GUEST_INFO -DLEGACY_VIRT_BASE='"0xffffffff80000000"'
legacy_CFLAGS := -mcmodel=kernel
legacy_OS     := miniguest-legacy
legacy_DEST   := tests
