"""Parsing test sources with ``ast``, with the garbage collector paused: CPython 3.11 raises
``SystemError: AST constructor recursion depth mismatch`` when a finalizer (numba's dispatchers
have some) runs in the middle of a parse."""

from __future__ import annotations

import ast
import gc


def parse(source: str) -> ast.Module:
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        if enabled:
            gc.enable()
