"""Build hook for the one compiled piece: the virtual-clock block hook.

The deterministic clock counts guest instructions from a Unicorn block hook written in C (a Python block hook
would cost ~0.5 us per block).  It is an ordinary C file compiled as an extension so that `pip install` builds it;
miniguest loads it with ctypes and hands Unicorn its function pointer directly.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("miniguest.hypervisor._vclock", ["miniguest/hypervisor/_vclock.c"])])
