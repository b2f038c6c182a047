"""A run's configuration, in three steps, one module each:

- ``schema``: the section dataclasses and their knobs (default, range, choices), one value's
  rules, YAML reading. It sits at the bottom of the import layers: the methods and the data
  declare their parameters with it. This package re-exports it, so ``from mpcl.config import
  Config`` is the schema.
- ``presets``: preset files that compose (``base:`` parts), and preset and sweep files named
  without a path (they ship inside the package).
- ``compose``: defaults <- preset <- ``key=value`` overrides -> a validated ``Config``
  (``load``). It sits above the methods: it needs their registry.
"""

from mpcl.config.schema import *  # noqa: F403
from mpcl.config.schema import __all__  # noqa: F401
