#ifndef SELFTEST_H
#define SELFTEST_H
#include "console.h"
#include "hypercall.h"
#include "lib.h"

extern struct start_info *si;
extern unsigned long entry_rsp;
extern int failures;

void expect(const char *what, long got, long want);
void run_layout(void);
void run_badptr(void);
void run_mmu(void);
void run_hostile(void);
void run_gntcopy(void);
void run_ptwr(void);
void run_balloon(void);
void run_usermode(void);
void run_evtchn(void);
void run_hypercalls(void);
void run_xtfgaps(void);
void run_xtfgaps2(void);
void run_echo(void);
void run_grow(void);
void run_segments(void);
void run_minigaps(const char *what);
void run_bench(const char *what, unsigned long n);
#endif
