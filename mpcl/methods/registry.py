"""The method registry: name -> ``Method`` subclass, whose ``Params`` declares its knobs.

A method module registers its classes at import (``register("simclr", SimCLR)``); a module
outside the package does the same once it is imported.
"""

from __future__ import annotations

import dataclasses

from mpcl.config import Config, ConfigError, MethodParams
from mpcl.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register(name: str, method: type[Method]) -> type[Method]:
    """Adds ``method`` as ``method.name=<name>``; its parameters are ``method.Params``, a
    dataclass subclass of ``MethodParams``. Returns ``method``."""
    params = getattr(method, "Params", None)
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise TypeError(f"register({name!r}, {method!r}): not a Method subclass")
    if not (dataclasses.is_dataclass(params) and issubclass(params, MethodParams)):
        raise TypeError(f"register({name!r}, {method.__name__}): {method.__name__}.Params must be a "
                        "dataclass subclass of mpcl.config.MethodParams")
    if METHODS.get(name, method) is not method:
        raise ValueError(f"register({name!r}, {method.__name__}): {name!r} is {METHODS[name].__name__} already")
    METHODS[name] = method
    return method


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r}: unknown; allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def new_params(name: str) -> MethodParams:
    """The default parameters of method ``name`` (ConfigError naming the known methods)."""
    return method_class(name).Params(name=name)


def build_method(cfg: Config, num_classes: int, num_samples: int) -> Method:
    """The method ``cfg.method`` names, built from its parameters (which must be its own
    ``Params``) and the other sections it reads."""
    cls = method_class(cfg.method.name)
    if type(cfg.method) is not cls.Params:
        raise ConfigError(f"method.name={cfg.method.name!r}: its parameters are {cls.Params.__name__}, "
                          f"got {type(cfg.method).__name__}")
    return cls.create(cfg.method, cfg, num_classes, num_samples)
