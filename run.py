#!/usr/bin/env python
"""mpcl from a checkout: ``python run.py COMMAND ...`` is the installed ``mpcl COMMAND ...``
(``mpcl --help`` lists the commands; the code is ``mpcl/cli.py``)."""

from mpcl.cli import main

if __name__ == "__main__":
    main()
