"""Xen's public interface as data: numbers, errno values and struct layouts (xen/include/public/).

No behaviour lives here. One module per public header family, named after the header.
"""
