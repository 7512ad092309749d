linuxabi_SRCS   := linuxabi/linuxabi.c linuxabi/xsave.c linuxabi/hcalls.c linuxabi/dbreg.c
linuxabi_COMMON := linuxabi/head.S common/lib.c common/console.c
linuxabi_BASE   := 0xffffffff80000000
linuxabi_DEFS   := -DNOTES_ALLOC -DPHYS_LOAD
linuxabi_CFLAGS := -mcmodel=kernel
linuxabi_OS     := miniguest-linuxabi
linuxabi_DEST   := tests
