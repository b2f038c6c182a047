"""What ``mpcl bench step`` compares and reports: the settings (precision, memory format,
compilation), the scale defaults per device, the devices' bf16 peaks, and the result rows."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass(frozen=True)
class Setting:
    name: str
    label: str
    precision: str          # train.precision
    channels_last: bool     # model.channels_last (the engine applies it on CUDA only)
    compile: bool           # train.compile


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("fp32", "fp32 eager", "fp32", False, False),
    Setting("bf16", "bf16 autocast", "bf16", False, False),
    Setting("bf16_cl", "bf16 + channels_last", "bf16", True, False),
    Setting("bf16_cl_compile", "bf16 + channels_last + compile", "bf16", True, True),
]}


@dataclass(frozen=True)
class Defaults:
    backbone: str
    batch_size: int
    settings: tuple[str, ...]
    steps: int       # steps per timed block
    rounds: int      # rounds of blocks, the first a warm-up
    samples: int     # dataset size the batches are drawn from (memory banks are this long)


# CUDA: the real measure (the paper's CIFAR recipe). CPU: a small model in fp32 so CI runs the
# command quickly. bf16 autocast runs on CPUs but without native bf16 units it is slower than
# fp32, and compile needs a C++ toolchain and minutes: both
# only when asked for with --settings (channels_last is applied on CUDA only).
CUDA_DEFAULTS = Defaults("resnet18", 512, tuple(SETTINGS), 20, 4, 50_000)
CPU_DEFAULTS = Defaults("small_cnn", 64, ("fp32",), 4, 3, 1_024)



# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) by a substring of the device name, first
# match wins (so "H100 PCIe" is tried before "H100").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
)

PRESET_PREFIX = {"fashion_mnist": "fmnist"}


def peak_bf16_flops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


@dataclass
class Row:
    key: str                    # unique within a run, e.g. "simclr/fp32/step"
    method: str
    kind: str                   # step | model (no augmentation) | augment | kornia
    setting: str = ""
    samples_per_s: float = 0.0
    peak_bytes: int = 0
    flops_per_step: float = 0.0  # per worker
    comm: dict[str, float] = field(default_factory=dict)   # category -> bytes per step (rank 0)
    skipped: str = ""            # why the row was not measured


@dataclass
class StepReport:
    rows: list[Row]
    device: str
    device_name: str
    workers: int
    batch_size: int             # global
    backbone: str
    image_size: int
    dataset: str
    steps: int
    rounds: int
    buffers_agree: dict[str, bool] = field(default_factory=dict)   # method -> worker-consistent buffers equal
    consistent_bytes: dict[str, int] = field(default_factory=dict)  # method -> bytes of those buffers
    broadcast_expected: dict[str, int] = field(default_factory=dict)  # method -> bytes of the other buffers

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)
