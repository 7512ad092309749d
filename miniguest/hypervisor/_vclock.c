/*
 * The deterministic clock's only compiled part: a Unicorn block hook that counts guest instructions and
 * stops the CPU when a deadline is reached.
 *
 * Unicorn calls a block hook at the start of every translated block it runs. Doing that in Python costs
 * ~0.5 us per block (a 20x slowdown on tight loops); this C callback costs a few percent. It adds the
 * block's instruction count to `icount` and calls uc_emu_stop() once `icount >= deadline`, so timers fire
 * and run slices end at the same instruction on every run. Instruction counts per block come from a small
 * cache keyed by (address, size); a miss asks Python (capstone) once per distinct block.
 *
 * Not a Python module: miniguest loads it with ctypes and passes `vclock_block_hook` to uc_hook_add.
 */
#include <stdint.h>

#define VCLOCK_CACHE_BITS 16
#define VCLOCK_CACHE_SIZE (1u << VCLOCK_CACHE_BITS)

struct vclock_entry {
    uint64_t key;
    uint32_t count;
    uint32_t pad;
};

struct vclock {
    uint64_t icount;                                       /* guest instructions run so far */
    uint64_t deadline;                                     /* stop when icount reaches this */
    int (*stop)(void *uc);                                 /* uc_emu_stop */
    uint32_t (*count_block)(uint64_t addr, uint32_t size); /* cache miss: count instructions */
    uint64_t misses;
    uint64_t stops;
    uint64_t block_addr;                                   /* the block being run ... */
    uint64_t block_start;                                  /* ... and icount when it was entered */
    struct vclock_entry cache[VCLOCK_CACHE_SIZE];
};

void vclock_block_hook(void *uc, uint64_t addr, uint32_t size, struct vclock *c)
{
    uint64_t key = addr ^ ((uint64_t)size << 52);
    uint32_t slot = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - VCLOCK_CACHE_BITS));
    struct vclock_entry *e = &c->cache[slot];
    uint32_t n;

    if (e->key == key && e->count) {
        n = e->count;
    } else {
        n = c->count_block(addr, size);
        if (n == 0)
            n = 1;
        c->misses++;
        e->key = key;
        e->count = n;
    }
    c->block_addr = addr;
    c->block_start = c->icount;
    c->icount += n;
    if (c->icount >= c->deadline) {
        c->stops++;
        c->stop(uc);
    }
}

void vclock_flush_cache(struct vclock *c)
{
    for (uint32_t i = 0; i < VCLOCK_CACHE_SIZE; i++)
        c->cache[i].count = 0;
}

/* A Python extension module must define this symbol to be importable; miniguest never imports it. */
void *PyInit__vclock(void) { return 0; }
