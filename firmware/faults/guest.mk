# faults: every exception class, software interrupts, privileged instructions, event masking and timers,
# each checked against Xen's PV ABI; `crash-in-pf` on the command line ends with a fault in the #PF handler.
faults_SRCS   := faults/entry.S faults/faults.c
faults_BASE   := 0xffffffff80000000
faults_DEFS   := -DNOTES_ALLOC -DPHYS_LOAD
faults_CFLAGS := -mcmodel=kernel
faults_OS     := miniguest-faults
faults_DEST   := samples
