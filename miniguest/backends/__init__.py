"""dom0 daemons (the xenconsoled and xenstored parts of a toolstack).

A backend sees a guest only as a real daemon does: a shared page (a 4096-byte memoryview), the dom0 end of
an event channel (`notify()` raises the guest's port; the hypervisor calls the backend's callback when the
guest sends), and the host loop for host-side I/O. It never imports hypervisor internals.
"""
