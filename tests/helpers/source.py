"""Parsing test sources with ``ast``, with the garbage collector paused (CPython 3.11 raises
``SystemError: AST constructor recursion depth mismatch`` when a finalizer runs in the middle of
a parse): the docs generator's parser, which reads the schema's sources the same way."""

from __future__ import annotations

from scripts.docgen import parse_source as parse

__all__ = ["parse"]
