/*
 * Time, as Mini-OS's arch/x86/time.c: system time is vcpu_time_info.system_time plus the TSC ticks since
 * tsc_timestamp, scaled by tsc_to_system_mul and tsc_shift; the record is copied under its version
 * seqlock (odd = Xen is writing it). Wall-clock time adds shared_info's wc_sec/wc_nsec. Blocking arms a
 * one-shot timer (set_timer_op) and sleeps with SCHEDOP_block, which also re-enables events.
 */
#include "minios.h"

static struct vcpu_time_info shadow;
static uint32_t shadow_ts_version;
static long shadow_ts_sec, shadow_ts_nsec;

/* (delta << shift or >> -shift) * mul_frac / 2^32, in 128-bit arithmetic. */
static inline uint64_t scale_delta(uint64_t delta, uint32_t mul_frac, int shift)
{
    uint64_t product;
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    __asm__("mul %%rdx; shrd $32,%%rdx,%%rax" : "=a"(product) : "0"(delta), "d"((uint64_t)mul_frac));
    return product;
}

uint64_t monotonic_clock(void)
{
    volatile struct vcpu_time_info *src = &vcpu_info0()->time;

    if (shadow.version != src->version) {
        do {
            shadow.version = src->version;
            rmb();
            shadow.tsc_timestamp = src->tsc_timestamp;
            shadow.system_time = src->system_time;
            shadow.tsc_to_system_mul = src->tsc_to_system_mul;
            shadow.tsc_shift = src->tsc_shift;
            rmb();
        } while ((src->version & 1) || shadow.version != src->version);
    }
    return shadow.system_time + scale_delta(rdtsc() - shadow.tsc_timestamp, shadow.tsc_to_system_mul,
                                            shadow.tsc_shift);
}

static void update_wallclock(void)
{
    volatile struct shared_info *s = HYPERVISOR_shared_info;
    do {
        shadow_ts_version = s->wc_version;
        rmb();
        shadow_ts_sec = s->wc_sec;
        shadow_ts_nsec = s->wc_nsec;
        rmb();
    } while ((s->wc_version & 1) | (shadow_ts_version ^ s->wc_version));
}

int gettimeofday(struct timeval *tv, void *tz)
{
    uint64_t nsec = monotonic_clock();
    if (shadow_ts_version != HYPERVISOR_shared_info->wc_version)
        update_wallclock();
    nsec += shadow_ts_nsec;
    tv->tv_sec = shadow_ts_sec + (long)(nsec / 1000000000UL);
    tv->tv_usec = (long)((nsec % 1000000000UL) / 1000);
    return 0;
}

/* Sleep until `until` or an event, whichever first. Called with events disabled, as Mini-OS does:
   SCHEDOP_block turns them on atomically with going to sleep, so no wakeup is lost. */
void block_domain(s_time_t until)
{
    if (NOW() < until) {
        HYPERVISOR_set_timer_op((uint64_t)until);
        HYPERVISOR_sched_op(SCHEDOP_block, 0);
        local_irq_disable();
        HYPERVISOR_set_timer_op(0);
    }
}

static void timer_handler(evtchn_port_t ev, struct pt_regs *regs, void *ign)
{
    /* The wakeup itself is the point; schedule() looks at the clock. */
}

static evtchn_port_t timer_port;

void init_time(void)
{
    printk("Initialising timer interface\n");
    timer_port = bind_virq(VIRQ_TIMER, timer_handler, NULL);
    unmask_evtchn(timer_port);
}
