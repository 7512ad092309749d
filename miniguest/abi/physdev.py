"""public/physdev.h: the sub-ops of physdev_op a PV domU may use."""
from __future__ import annotations

PHYSDEVOP_eoi = 12
PHYSDEVOP_irq_status_query = 5
PHYSDEVOP_set_iopl = 6
PHYSDEVOP_set_iobitmap = 7
PHYSDEVOP_pirq_eoi_gmfn_v1 = 17
PHYSDEVOP_pirq_eoi_gmfn_v2 = 28
