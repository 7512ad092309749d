"""blkback: dom0's block backend, serving blkif rings from image files (see xenbus.py and blkback.py)."""
from __future__ import annotations

from miniguest.backends.blkback.blkback import MAX_INDIRECT_SEGMENTS, MAX_PERSISTENT_GRANTS, BlkRing, VbdState
from miniguest.backends.blkback.image import DiskImage, ImageError
from miniguest.backends.blkback.xenbus import Blkback

__all__ = ["Blkback", "BlkRing", "VbdState", "DiskImage", "ImageError", "MAX_INDIRECT_SEGMENTS",
           "MAX_PERSISTENT_GRANTS"]
