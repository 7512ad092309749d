"""Debugging aids: symbols from the kernel ELF, disassembly, crash reports, the gdb stub, traces."""
