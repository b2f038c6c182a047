"""The methods: ``METHODS[name]`` is a ``Method`` subclass whose ``Params`` declares its knobs;
``build_method(cfg, num_classes, num_samples)`` builds the one ``cfg.method`` names.

Every module of this package is imported here, and each registers the methods it defines
(``register(name, cls)`` at its end), so a new method is one new file. A module outside the
package registers its methods the same way once it is imported.
"""

import importlib
import pkgutil

from mpcl.methods.base import Method, SSLOutput, StepOutput, TemperatureParams
from mpcl.methods.registry import METHODS, build_method, method_class, new_params, register

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "Method", "SSLOutput", "StepOutput", "TemperatureParams", "build_method", "method_class",
           "new_params", "register"]
