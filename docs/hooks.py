"""MkDocs hook (mkdocs.yml ``hooks:``): the marker lines of a page (``<!-- mpcl:cli -->``,
``<!-- mpcl:config -->``) become the pages generated from the code by scripts/docgen.py."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# MkDocs loads this file by path and restores sys.path afterwards: the checkout's packages are
# imported now, so that the pages describe this checkout's code, not an installed copy of mpcl
sys.path.insert(0, str(ROOT))
try:
    import data_prep  # noqa: F401
    import mpcl  # noqa: F401
    from scripts.docgen import replace_markers
finally:
    sys.path.remove(str(ROOT))


def on_page_markdown(markdown: str, page, config, files) -> str:
    return replace_markers(markdown)
