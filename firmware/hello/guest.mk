hello_SRCS   := hello/hello.c
hello_BASE   := 0xffffffff80000000
hello_DEFS   := -DNOTES_ALLOC -DPHYS_LOAD
hello_CFLAGS := -mcmodel=kernel
hello_OS     := miniguest-hello
hello_DEST   := samples
