"""Config presets that compose: a preset file may start from other preset files.

A preset is a YAML mapping of sections (``data:``, ``method:``, ...). Its optional top-level
``base:`` names one file or a list of files, relative to the preset's own directory; they are
read first, in order, each later one overriding the earlier, and the preset's own keys override
them all. So ``configs/cifar10_simclr_attn.yaml`` is a few lines on top of
``configs/parts/data/cifar10.yaml`` and ``configs/parts/method/simclr_attn.yaml``, and a recipe
change is made once, in its part.

Several presets given at once (``train --config A --config B``) merge the same way: B over A.
So a part applies on top of a preset without a file of its own: ``--config fmnist_simclr
--config parts/budget/smoke``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mpcl.config.schema import ConfigError, read_yaml_mapping


def read_preset(path: str | Path | list[str | Path]) -> dict:
    """The preset at ``path`` (or shipped under that name) with its ``base`` files merged in,
    as one nested mapping (without the ``base`` key); a list of presets is merged in order, each
    later one overriding the earlier, as a ``base`` list is. Raises ConfigError naming the file
    for a missing preset or base, a cycle, or a ``base`` that is not a path or a list of paths."""
    merged: dict = {}
    for one in path if isinstance(path, (list, tuple)) else [path]:
        _merge(merged, _read(find("preset", one, "--config"), chain=()))
    return merged


def _read(path: Path, chain: tuple[Path, ...]) -> dict:
    where = f"--config {path}" if not chain else f"{chain[-1]}: base {path}"
    tree = read_yaml_mapping(path, ConfigError, f"{where}: no such file", "a mapping of sections")
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: base files include each other ({loop})")
    bases = tree.pop("base", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: base={bases!r}: expected a preset path or a list of them")
    merged: dict = {}
    for base in bases:   # beside the preset, else a shipped preset of that name
        beside = path.parent / base
        if not beside.is_file():
            try:
                beside = find("preset", base, f"{path}: base")
            except ConfigError:
                pass         # _read names the missing file
        _merge(merged, _read(beside, (*chain, resolved)))
    _merge(merged, tree)
    return merged


def _merge(into: dict, tree: dict) -> None:
    """Deep merge: mappings merge key by key, any other value replaces what was there."""
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# The presets (configs/) and sweep files (sweeps/) ship inside the package, so that an installed
# mpcl names them without a path. In a checkout these two folders are links to the top-level ones.
SHIPPED = {"preset": "preset_files", "sweep": "sweep_files"}


def shipped_dir(kind: str) -> Path:
    """The folder of the shipped presets (``kind="preset"``) or sweep files (``"sweep"``)."""
    return Path(str(resources.files("mpcl.config") / SHIPPED[kind]))


def shipped_names(kind: str) -> list[str]:
    """The names of the shipped presets or sweep files (``cifar10_simclr``, ``fmnist_demo``)."""
    return sorted(p.stem for p in shipped_dir(kind).glob("*.yaml"))


def find(kind: str, name: str | Path, key: str) -> Path:
    """The file that ``name`` names: a path to a file (as given), else a shipped preset or sweep
    file by name (``cifar10_simclr``, ``cifar10_simclr.yaml``, ``configs/cifar10_simclr.yaml``).
    ``key`` is the argument or key that holds the name, for the one-line ``ConfigError``."""
    path = Path(name)
    if path.is_file():
        return path
    folder = {"preset": "configs", "sweep": "sweeps"}[kind]
    relative = path.relative_to(folder) if path.parts[:1] == (folder,) else path
    for candidate in (relative, relative.with_name(relative.name + ".yaml")):
        shipped = shipped_dir(kind) / candidate
        if candidate.name and shipped.is_file():
            return shipped
    raise ConfigError(f"{key} {name}: no such file, and no shipped {kind} of that name "
                      f"(shipped: {', '.join(shipped_names(kind))})")
