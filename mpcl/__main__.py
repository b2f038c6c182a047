"""``python -m mpcl COMMAND ...``: the ``mpcl`` command."""

from mpcl.cli import main

main()
