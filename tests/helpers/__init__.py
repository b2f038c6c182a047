"""What several test modules share, in one place: a test module imports from here
(``from tests.helpers.runs import tiny_overrides``), never from another test module or from
conftest.py, which holds only fixtures and hooks (``tests/test_layout.py`` checks it).

- ``data``: small datasets written in the official on-disk formats;
- ``runs``: the overrides of runs and sweep trials that take seconds on a CPU;
- ``sweeps``: a tiny sweep file and the environment its subprocesses run in;
- ``references``: reference computations (loops in float64) and small method builders;
- ``ranks``: gloo process groups and free ports.
"""
