/*
 * The scheduler, as Mini-OS's sched.c: cooperative threads, round robin. schedule() wakes sleepers whose
 * time has come, picks the first runnable thread and moves it to the back of the list; with nothing to
 * run it blocks the domain until the earliest wakeup (at most 10 s away) or an event, then looks again.
 * Events only make threads runnable (their handlers call wake/wake_up); threads never preempt.
 */
#include "minios.h"

void thread_starter(void);
void arch_switch_threads(unsigned long *prev_sp_ip, unsigned long *next_sp_ip);

struct thread *current;
static struct thread *thread_list;              /* singly linked, in round-robin order */
static struct thread *idle_thread, *exited_threads;
static struct thread main_thread = { .name = "main", .flags = RUNNABLE_FLAG };

static int is_runnable(struct thread *t) { return t->flags & RUNNABLE_FLAG; }

static void list_remove(struct thread **list, struct thread *t)
{
    for (struct thread **p = list; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            t->next = NULL;
            return;
        }
}

static void list_append(struct thread **list, struct thread *t)
{
    struct thread **p = list;
    while (*p)
        p = &(*p)->next;
    t->next = NULL;
    *p = t;
}

void schedule(void)
{
    struct thread *prev = current, *next, *t, *tnext;
    unsigned long flags;

    if (irqs_disabled()) {
        printk("Must not call schedule() with IRQs disabled\n");
        do_exit();
    }
    local_irq_save(flags);
    for (;;) {
        s_time_t now = NOW(), min_wakeup_time = now + SECONDS(10);
        next = NULL;
        for (t = thread_list; t; t = tnext) {
            tnext = t->next;
            if (!is_runnable(t) && t->wakeup_time) {
                if (t->wakeup_time <= now)
                    wake(t);
                else if (t->wakeup_time < min_wakeup_time)
                    min_wakeup_time = t->wakeup_time;
            }
            if (is_runnable(t)) {
                next = t;
                list_remove(&thread_list, t);
                list_append(&thread_list, t);
                break;
            }
        }
        if (next)
            break;
        /* Whatever wakes us is delivered as an upcall on the way back from SCHEDOP_block (which unmasks);
           Mini-OS's extra force_evtchn_callback() here would be a hypercall with events masked: a no-op. */
        block_domain(min_wakeup_time);
    }
    local_irq_restore(flags);
    if (prev != next) {
        current = next;
        arch_switch_threads(&prev->sp, &next->sp);
    }
    /* Free exited threads (not the one whose stack we may still be leaving). */
    while (exited_threads && exited_threads != current) {
        t = exited_threads;
        exited_threads = t->next;
        free_pages(t->stack, STACK_SIZE_PAGE_ORDER);
        free(t);
    }
}

struct thread *create_thread(const char *name, void (*function)(void *), void *data)
{
    struct thread *t = malloc(sizeof(*t));
    unsigned long flags;

    memset(t, 0, sizeof(*t));
    t->name = name;
    t->stack = (char *)alloc_pages(STACK_SIZE_PAGE_ORDER);
    /* thread_starter pops data then function */
    t->sp = (unsigned long)t->stack + STACK_SIZE;
    t->sp -= sizeof(unsigned long);
    *(unsigned long *)t->sp = (unsigned long)function;
    t->sp -= sizeof(unsigned long);
    *(unsigned long *)t->sp = (unsigned long)data;
    t->ip = (unsigned long)thread_starter;
    printk("Thread \"%s\": pointer: %p, stack: %p\n", name, (void *)t, (void *)t->stack);
    t->flags = RUNNABLE_FLAG;
    local_irq_save(flags);
    list_append(&thread_list, t);
    local_irq_restore(flags);
    return t;
}

void exit_thread(void)
{
    unsigned long flags;
    struct thread *t = current;
    printk("Thread \"%s\" exited.\n", t->name);
    local_irq_save(flags);
    list_remove(&thread_list, t);
    t->flags &= ~RUNNABLE_FLAG;
    t->next = exited_threads;
    exited_threads = t;
    local_irq_restore(flags);
    for (;;) {
        schedule();
        printk("schedule() returned!  Trying again\n");
    }
}

void block(struct thread *t)
{
    t->wakeup_time = 0;
    t->flags &= ~RUNNABLE_FLAG;
}

void wake(struct thread *t)
{
    t->wakeup_time = 0;
    t->flags |= RUNNABLE_FLAG;
}

void msleep(uint32_t millisecs)
{
    struct thread *t = current;
    t->wakeup_time = NOW() + MILLISECS(millisecs);
    t->flags &= ~RUNNABLE_FLAG;
    schedule();
}

void add_waiter(struct wait_queue *w, struct wait_queue_head *q)
{
    unsigned long flags;
    local_irq_save(flags);
    if (!w->queued) {
        w->next = q->first;
        q->first = w;
        w->queued = 1;
    }
    block(w->thread);
    local_irq_restore(flags);
}

void remove_waiter(struct wait_queue *w, struct wait_queue_head *q)
{
    unsigned long flags;
    local_irq_save(flags);
    if (w->queued) {
        for (struct wait_queue **p = &q->first; *p; p = &(*p)->next)
            if (*p == w) {
                *p = w->next;
                break;
            }
        w->queued = 0;
    }
    wake(w->thread);
    local_irq_restore(flags);
}

/* Make every waiter runnable; each takes itself off the queue when it runs again. */
void wake_up(struct wait_queue_head *q)
{
    unsigned long flags;
    local_irq_save(flags);
    for (struct wait_queue *w = q->first; w; w = w->next)
        wake(w->thread);
    local_irq_restore(flags);
}

static void idle_thread_fn(void *unused)
{
    for (;;) {
        block(current);
        schedule();
    }
}

void init_sched(void)
{
    printk("Initialising scheduler\n");
    current = &main_thread;
    idle_thread = create_thread("Idle", idle_thread_fn, NULL);
}

/* start_kernel's last act: leave the boot stack for the idle thread, for good. */
void run_idle_thread(void)
{
    current = idle_thread;
    __asm__ volatile("movq %0,%%rsp; pushq %1; ret" :: "r"(idle_thread->sp), "r"(idle_thread->ip));
    __builtin_unreachable();
}
