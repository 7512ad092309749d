"""The toolstack (what libxl, xl and libxenguest do): parse a kernel, build a domain, connect dom0's
daemons, read xl.cfg files."""
from miniguest.toolstack.libxl import create_domain  # noqa: F401  (the toolstack's entry point)
