"""JSON from files we did not write: parse errors, absurd nesting and over-long numbers become one-line errors.

json.loads raises RecursionError on deep nesting and a plain ValueError on integers over Python's digit limit;
and a value nested hundreds of levels deep passes json.loads only to blow up the first recursive consumer
(str(), json.dumps, our own walkers). `loads` turns all of that into ValueError with a short reason, and
refuses documents nested deeper than `max_depth` (ours nest a handful of levels).
"""
from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


def depth_exceeds(value: Any, limit: int) -> bool:
    """True if `value` nests lists/dicts more than `limit` levels deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in v)
    return False


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads for untrusted text. Raises ValueError (one line) for anything that is not sane JSON."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(e.msg + f" at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (ValueError, TypeError) as e:            # an integer of more than 4300 digits, a bad encoding
        raise ValueError(str(e).split(";")[0]) from None
    if depth_exceeds(value, max_depth):
        raise ValueError(f"nested more than {max_depth} levels deep")
    return value
