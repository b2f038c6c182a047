"""The docs: a short README whose links into docs/ hold, and the pages generated from the code
(scripts/docgen.py, through the MkDocs hook docs/hooks.py) covering every command, option and
config key. The docs' commands themselves run in test_readme_commands.py."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import docgen

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_readme_links_into_docs_point_to_files():
    links = re.findall(r"\]\((docs/[^)#\s]*)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert len(links) >= 12, links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links to missing docs files: {missing}"


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from pages(value) if isinstance(value, list) else [value]

    assert sorted(pages(config["nav"])) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert config["hooks"] == ["docs/hooks.py"]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def test_the_cli_page_has_every_command_and_option():
    from data_prep.__main__ import build_parser as data_prep_parser
    from mpcl.cli import build_parser

    page = docgen.cli_markdown()
    parser = build_parser()
    assert set(parser.commands) >= {"train", "sweep", "report", "eval", "bench", "dynamics", "reproduce", "demo"}
    for name, sub in parser.commands.items():
        section = page.split(f"## `mpcl {name}`", 1)[1].split("\n## ", 1)[0]
        for option in _options(sub):
            assert option in section, f"mpcl {name}: {option} is not on the CLI page"
    data_prep = page.split("## `python -m data_prep`", 1)[1]
    assert all(option in data_prep for option in _options(data_prep_parser()))
    assert "usage: mpcl train" in page and "usage: python -m data_prep" in page
    assert "[`mpcl train`](#mpcl-train)" in page


def test_nested_subparsers_are_walked():
    top = argparse.ArgumentParser(prog="tool")
    sub = top.add_subparsers(dest="command")
    bench = sub.add_parser("bench", help="benchmarks")
    inner = bench.add_subparsers(dest="what")
    inner.add_parser("loader", help="the loader", aliases=["ld"]).add_argument("--samples")
    inner.add_parser("gpu-check", help="the CUDA checks")
    found = [(name, summary) for name, summary, _ in docgen.walk_parsers(top, "tool")]
    assert found == [("tool", ""), ("tool bench", "benchmarks"), ("tool bench loader", "the loader"),
                     ("tool bench gpu-check", "the CUDA checks")]


def _row(page: str, key: str) -> str:
    (row,) = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
    return row


def test_the_config_page_has_every_key_with_its_default():
    from mpcl.config import schema
    from mpcl.methods import METHODS

    page = docgen.config_markdown()
    for section in schema.SECTIONS:
        if section == "method":
            continue
        cls = type(getattr(schema.Config(), section))
        for f in dataclasses.fields(cls):
            assert f"| `{docgen._value(f.default)}` |" in _row(page, f"{section}.{f.name}"), f.name
    for name, method in METHODS.items():
        section = page.split(f"### `method.name={name}`", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        for f in dataclasses.fields(method.Params):
            if f.name != "name":
                assert f"| `method.{f.name}` | `" in section, (name, f.name)
    assert "`out` (`str`, default `runs/default`)" in page


def test_the_config_page_states_ranges_choices_and_the_fields_comments():
    page = docgen.config_markdown()
    assert _row(page, "data.subset") == ("| `data.subset` | `int` | `0` | `0 <= x` | "
                                         "train on the first N training samples (0 = all) |")
    assert _row(page, "optim.momentum").split(" | ")[3] == "`0.0 <= x < 1.0`"
    assert "`auto`, `online`, `offline`, `disabled` | auto: online with an API key, else offline |" in page
    # a trailing comment continued on the next line; an own-line comment above its field
    assert _row(page, "data.loader").endswith("ffcv: .beton files from python -m data_prep; "
                                              "torch: the fallback over raw arrays |")
    assert "| the last plain-target epoch (0-based): the first mixed epoch is bank_warmup_epochs + 1" in page
    assert "`resnet18`, `resnet50`, `small_cnn`, `timm/<model>` | resnet18 \\| resnet50 \\| small_cnn \\| timm/<name>" \
        in _row(page, "model.backbone")


def test_field_comments_of_an_inherited_dataclass():
    @dataclasses.dataclass
    class Base:
        # above a
        a: int = 1   # trailing a
        b: int = 2

    @dataclasses.dataclass
    class Child(Base):
        c: str = docgen.__name__   # trailing c
                                   # continued
        # above d
        d: bool = False

    assert docgen.field_comments(Child) == {"a": "above a; trailing a", "b": "", "c": "trailing c continued",
                                            "d": "above d"}


def test_markers_are_replaced_and_an_unknown_one_is_an_error():
    text = docgen.replace_markers("# CLI\n\n<!-- mpcl:cli -->\n\nafter\n")
    assert "<!-- mpcl:" not in text and "## `mpcl train`" in text and text.endswith("\nafter\n")
    with pytest.raises(ValueError, match="unknown docs marker"):
        docgen.replace_markers("<!-- mpcl:nothing -->\n")


def test_every_marker_in_the_docs_is_known():
    used = {m for p in (ROOT / "docs").glob("*.md") for m in re.findall(r"<!-- mpcl:\S+ -->", p.read_text())}
    assert used == set(docgen.MARKERS)


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` (what `make lint` runs): every link and anchor holds, the hook
    fills in the generated pages."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = (tmp_path / "site/cli/index.html").read_text()
    assert 'id="mpcl-train"' in cli and "usage: mpcl train" in cli and "mpcl:cli" not in cli
    assert "method.bank_mix" in (tmp_path / "site/configuration/index.html").read_text()
