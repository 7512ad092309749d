# minios: a Mini-OS-shaped kernel (upstream Mini-OS's boot path, written for this tree). It links at 0 with
# its Xen notes in a non-allocated SHT_NOTE section and brings its own entry code and console, so only
# lib.c is shared.
minios_SRCS   := minios/x86_64.S minios/setup.c minios/traps.c minios/events.c minios/mm.c minios/time.c \
                 minios/console.c minios/gnttab.c minios/sched.c minios/xenbus.c minios/shutdown.c \
                 minios/test.c minios/kernel.c minios/netfront.c minios/nettest.c minios/blkfront.c \
                 minios/blktest.c
minios_COMMON := common/lib.c
minios_BASE   := 0
minios_DEFS   :=
minios_CFLAGS :=
minios_OS     := miniguest-minios
minios_DEST   := samples
