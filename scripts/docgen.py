"""The docs' generated pages, built from the code so that they cannot drift from it.

- ``cli_markdown``: every command and subcommand of ``mpcl.cli.build_parser()`` (nested
  subparsers included) and ``python -m data_prep``, each with its argparse help.
- ``config_markdown``: every key of the config schema (``mpcl.config.schema``) and of every
  registered method's ``Params``: type, default, allowed values, and the trailing ``# comment``
  of its field in the source as its description.

``replace_markers`` swaps a marker line (``<!-- mpcl:cli -->``, ``<!-- mpcl:config -->``) of a
page for the generated text; docs/hooks.py calls it for every page MkDocs builds.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import gc
import inspect
import io
import os
import sys
import textwrap
import tokenize
import typing
from collections.abc import Callable, Iterator

HELP_WIDTH = "100"   # argparse wraps help to $COLUMNS; fixed, so the page does not depend on the terminal


@contextlib.contextmanager
def _as_installed() -> Iterator[None]:
    """Parsers built as the installed ``mpcl`` names itself (``mpcl.cli.program`` reads argv[0])
    and help wrapped at a fixed width."""
    argv0, columns = sys.argv[0], os.environ.get("COLUMNS")
    sys.argv[0], os.environ["COLUMNS"] = "mpcl", HELP_WIDTH
    try:
        yield
    finally:
        sys.argv[0] = argv0
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def walk_parsers(parser: argparse.ArgumentParser, name: str,
                 summary: str = "") -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(command, one-line help, parser) of ``parser`` and every subparser below it, depth first;
    an alias of a subcommand is not listed twice."""
    yield name, summary, parser
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for sub_name, sub in action.choices.items():
            if id(sub) not in seen:
                seen.add(id(sub))
                yield from walk_parsers(sub, f"{name} {sub_name}", helps.get(sub_name, ""))


def all_parsers() -> list[tuple[str, str, argparse.ArgumentParser, str]]:
    """(command, one-line help, parser, its --help text) of ``mpcl`` and ``python -m data_prep``."""
    from data_prep.__main__ import build_parser as data_prep_parser
    from mpcl.cli import build_parser

    with _as_installed():
        parsers = list(walk_parsers(build_parser(), "mpcl"))
        parsers += walk_parsers(data_prep_parser(), "python -m data_prep", "write a raw dataset as FFCV .beton files")
        return [(name, summary, parser, parser.format_help()) for name, summary, parser in parsers]


def _anchor(command: str) -> str:
    return command.replace("python -m ", "").replace(" ", "-").replace("_", "-")


def cli_markdown() -> str:
    """A table of every command, then each command's ``--help`` as argparse prints it."""
    parsers = all_parsers()
    lines = ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{name}`](#{_anchor(name)}) | {_cell(summary)} |" for name, summary, _, _ in parsers[1:]]
    for name, _, _, help_text in parsers:
        lines += ["", f"## `{name}` {{#{_anchor(name)}}}", "", "```text", help_text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def field_comments(cls: type) -> dict[str, str]:
    """Each field of dataclass ``cls`` (inherited ones included) -> the comments written with it
    in the source: the comment lines right above it, its trailing comment and the comment lines
    below that continue the trailing one (indented deeper than the field: a comment at the
    field's own indentation belongs to the next field)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and "__annotations__" in klass.__dict__:
            comments.update(_own_field_comments(klass))
    return comments


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The garbage collector paused while CPython 3.11 builds an AST: it raises ``SystemError: AST
    constructor recursion depth mismatch`` when a finalizer (numba's dispatchers have some) runs in
    the middle of a parse, whether ``ast.parse`` is ours or ``inspect.getsource``'s."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_source(source: str) -> ast.Module:
    """``ast.parse`` with the garbage collector paused (see ``gc_paused``)."""
    with gc_paused():
        return ast.parse(source)


def _own_field_comments(cls: type) -> dict[str, str]:
    with gc_paused():  # inspect.getsource parses the whole module to find the class
        source = textwrap.dedent(inspect.getsource(cls))
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    lines = source.splitlines()
    # row -> (column, text, whether the line holds nothing but the comment)
    found = {t.start[0]: (t.start[1], t.string.lstrip("#").strip(), not lines[t.start[0] - 1][:t.start[1]].strip())
             for t in tokens if t.type == tokenize.COMMENT}
    (classdef,) = parse_source(source).body
    comments, consumed = {}, set()
    for node in classdef.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, row = [], node.lineno - 1
        while row in found and found[row][2] and row not in consumed:
            above.insert(0, found[row][1])
            row -= 1
        trailing = [found[r] for r in range(node.lineno, node.end_lineno + 1) if r in found and not found[r][2]]
        text = [c[1] for c in trailing]
        row = node.end_lineno + 1
        while trailing and row in found and found[row][2] and found[row][0] > node.col_offset:
            text.append(found[row][1])
            consumed.add(row)
            row += 1
        comments[node.target.id] = "; ".join(part for part in (" ".join(above), " ".join(text)) if part)
    return comments


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _value(value: typing.Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return '""' if value == "" else str(value)


def allowed(f: dataclasses.Field, registries: dict[str, list[str]], key: str) -> str:
    """The field's allowed values: its choices, its bounds, or the names of a registry."""
    choices, lower, upper = (f.metadata.get(k) for k in ("choices", "lower", "upper"))
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    if key in registries:
        return ", ".join(f"`{c}`" for c in registries[key])
    low = "" if lower is None else f"{_value(lower[0])} {'<=' if lower[1] else '<'} "
    high = "" if upper is None else f" {'<=' if upper[1] else '<'} {_value(upper[0])}"
    return f"`{low}x{high}`" if low or high else ""


def _default(f: dataclasses.Field) -> typing.Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def key_table(cls: type, prefix: str, registries: dict[str, list[str]], skip: tuple[str, ...] = ()) -> list[str]:
    """A markdown table of ``cls``'s fields: key, type, default, allowed values, description."""
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    rows = ["| key | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = f"{prefix}{f.name}"
        rows.append(f"| `{key}` | `{hints[f.name].__name__}` | `{_value(_default(f))}` | "
                    f"{allowed(f, registries, key)} | {_cell(comments.get(f.name, ''))} |")
    return rows


def config_markdown() -> str:
    """One table per config section, then one per method (the keys of ``method.name=<method>``)."""
    from mpcl.config import schema
    from mpcl.data.datasets import DATASET_NAMES
    from mpcl.methods import METHODS
    from mpcl.models import BACKBONES

    registries = {"data.dataset": sorted(DATASET_NAMES), "model.backbone": [*sorted(BACKBONES), "timm/<model>"],
                  "method.name": sorted(METHODS)}
    lines: list[str] = []
    for f in dataclasses.fields(schema.Config):
        if f.name == "method":
            lines += ["", "## `method`", "", f"`method.name`: {allowed(f, registries, 'method.name')} (default "
                      "`simclr`); the other `method.*` keys are the chosen method's own, below."]
            for name in sorted(METHODS):
                params = METHODS[name].Params
                where = inspect.getsourcefile(params).split("mpcl/", 1)[-1]
                lines += ["", f"### `method.name={name}`", "", f"`{params.__name__}` (`mpcl/{where}`)", ""]
                knobs = [p for p in dataclasses.fields(params) if p.name != "name"]
                lines += key_table(params, "method.", registries, skip=("name",)) if knobs else ["No parameters."]
        elif dataclasses.is_dataclass(_default(f)):
            lines += ["", f"## `{f.name}`", "", *key_table(type(_default(f)), f"{f.name}.", registries)]
        else:
            comments = field_comments(schema.Config)
            lines += ["", f"## `{f.name}`", "", f"`{f.name}` (`str`, default `{_value(f.default)}`): "
                      f"{comments.get(f.name) or 'the run directory'}."]
    return "\n".join(lines).lstrip("\n") + "\n"


MARKERS: dict[str, Callable[[], str]] = {"<!-- mpcl:cli -->": cli_markdown, "<!-- mpcl:config -->": config_markdown}


def replace_markers(markdown: str) -> str:
    """``markdown`` with each marker line replaced by its generated text; an unknown
    ``<!-- mpcl:... -->`` marker is an error, not a silently empty section."""
    out = []
    for line in markdown.splitlines():
        marker = line.strip()
        if marker.startswith("<!-- mpcl:"):
            if marker not in MARKERS:
                raise ValueError(f"unknown docs marker {marker!r}; known: {', '.join(MARKERS)}")
            out.append(MARKERS[marker]().rstrip("\n"))
        else:
            out.append(line)
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")
