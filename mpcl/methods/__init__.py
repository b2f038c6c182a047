"""Methods registry: ``METHODS[name](cfg, num_classes, num_samples)`` builds one."""

from mpcl.methods.base import Method, SSLOutput, StepOutput
from mpcl.methods.barlow import BarlowTwins
from mpcl.methods.mcl import MCL
from mpcl.methods.moco import MoCo
from mpcl.methods.simclr import SimCLR, SimCLRAttn, SimCLRAttnMulti, SupCon
from mpcl.methods.simsiam import SimSiam, SimSiamMulti
from mpcl.methods.spcl import SPCL

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "simclr_attn": SimCLRAttn,
    "simclr_attn_multi": SimCLRAttnMulti,
    "simsiam": SimSiam,
    "simsiam_multi": SimSiamMulti,
    "barlow_twins": BarlowTwins,
    "supcon": SupCon,
    "moco": MoCo,
    "mcl": MCL,
    "spcl": SPCL,
}


def build_method(cfg, num_classes: int, num_samples: int) -> Method:
    if cfg.method.name not in METHODS:
        raise KeyError(f"unknown method {cfg.method.name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method.name](cfg, num_classes, num_samples)


__all__ = ["METHODS", "Method", "SSLOutput", "StepOutput", "build_method"]
