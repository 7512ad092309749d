#ifndef FIRMWARE_CONSOLE_H
#define FIRMWARE_CONSOLE_H
#include "xen.h"

/* The hypervisor console (HYPERVISOR_console_io). */
void hv_write(const char *s, int len);
void hv_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The PV console ring from start_info, notifying dom0 through its event channel. */
void console_ring_init(struct xencons_interface *ring, evtchn_port_t port);
void console_ring_write(const char *s, int len);
int console_ring_read(char *buf, int len);

/* printk: both, as Mini-OS does (each line reaches the hypervisor console and the ring). */
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Translate machine frames to our virtual addresses through the M2P Xen maps read-only for us. */
extern unsigned long virt_base;
extern unsigned long *phys_to_machine_mapping;
void *mfn_to_virt(unsigned long mfn);
unsigned long virt_to_mfn(const void *va);
#endif
