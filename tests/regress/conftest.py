"""Shared fixtures of the regression-testing suite: the project's guests and tracing helpers."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # tests/guestlib.py

from regresslib import *  # noqa: E402,F401,F403
