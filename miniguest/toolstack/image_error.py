"""The one error of loading a kernel image (ELF or bzImage) or a module: its str() is the line shown to the
user. Its own module so that the ELF loader (libelf.py) and the bzImage decompressor (bzimage.py) can import
each other's work without a cycle."""
from __future__ import annotations


class ImageError(Exception):
    """The kernel image cannot be booted; str() is the one line shown to the user."""
