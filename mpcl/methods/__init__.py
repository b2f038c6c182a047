"""Methods registry: ``METHODS[name](cfg, num_classes, num_samples)`` builds one."""

from mpcl.methods.base import Method, SSLOutput, StepOutput
from mpcl.methods.simclr import SimCLR, SimCLRAttn
from mpcl.methods.simsiam import SimSiam, SimSiamMulti

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "simclr_attn": SimCLRAttn,
    "simsiam": SimSiam,
    "simsiam_multi": SimSiamMulti,
}


def build_method(cfg, num_classes: int, num_samples: int) -> Method:
    if cfg.method.name not in METHODS:
        raise KeyError(f"unknown method {cfg.method.name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method.name](cfg, num_classes, num_samples)


__all__ = ["METHODS", "Method", "SSLOutput", "StepOutput", "build_method"]
