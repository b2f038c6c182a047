"""One (method, setting) of ``mpcl bench step`` built the way ``mpcl train`` builds it, kornia's
equivalent augmentation, and the counting of the bytes handed to collectives under DDP."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable

import torch

from mpcl.bench.step_settings import PRESET_PREFIX, Setting


def method_config(method: str, dataset: str, backbone: str, batch_size: int, device: str,
                  setting: Setting, overrides: list[str]):
    """The method's preset for ``dataset`` (``configs/<dataset>_<method>.yaml``, else the
    defaults) with the bench's scale and this setting (``method.*`` keys of other methods
    left out)."""
    from mpcl.config.compose import declared_only, load

    from mpcl.config.presets import shipped_dir

    preset = shipped_dir("preset") / f"{PRESET_PREFIX.get(dataset, dataset)}_{method}.yaml"
    return load(str(preset) if preset.is_file() else None, declared_only(method, [
        f"method.name={method}", f"data.dataset={dataset}", "data.loader=torch",
        f"data.batch_size={batch_size}", f"model.backbone={backbone}", f"train.device={device}",
        f"train.precision={setting.precision}", f"model.channels_last={str(setting.channels_last).lower()}",
        f"train.compile={str(setting.compile).lower()}",
        "method.bank_warmup_epochs=0",  # simsiam_multi reads its bank at the timed epoch (1)
        *overrides]))


class StepRunner:
    """One (method, setting): the engine's model, optimizer and step on synthetic uint8 data."""

    EPOCH = 1   # the timed epoch: banks were written in epoch 0 and are read now

    def __init__(self, cfg, images: torch.Tensor, labels: torch.Tensor, device: torch.device, comm=None):
        from mpcl import distributed as dist
        from mpcl.data.datasets import get_dataset
        from mpcl.data.batch import Loaders
        from mpcl.data.recipe import eval_transform, ssl_augment
        from mpcl.data.tensor_loader import EvalLoader, TensorTrainLoader
        from mpcl.engine.loop import build, distributed_step, runtime

        self.cfg, self.device = cfg, device
        spec = get_dataset(cfg.data.dataset)
        self.rt = runtime(cfg)
        rank, world = dist.rank(), dist.world_size()
        self.loader = TensorTrainLoader(images, labels, cfg.data.batch_size, rank, world, cfg.train.seed,
                                        ssl_augment(cfg, spec), device)
        train_eval = EvalLoader(images, labels, 512, eval_transform(cfg, spec), device, rank, world)
        loaders = Loaders(self.loader, train_eval, train_eval, self.loader, spec, len(images))
        self.method, self.optimizer = build(cfg, self.rt, loaders)
        self.method.train()
        self.method.on_epoch_start(self.EPOCH, loaders, self.rt.autocast)  # SPCL clusters here
        self.method.train()
        self.step_module = distributed_step(self.method, device)
        if comm is not None and dist.is_distributed():
            comm.attach(self.step_module)
        if cfg.train.compile:
            self.step_module = torch.compile(self.step_module)
        self.loader.set_epoch(self.EPOCH)
        self._batches = iter(())
        self.fixed = self.next_batch()
        self.step_count = 0
        if hasattr(self.method, "bank"):   # epoch 0's writes become the snapshot read in epoch 1
            self.step()
            self.method.on_epoch_end(0)

    def next_batch(self):
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)

    def step(self, batch=None) -> None:
        from mpcl.engine.loop import optimizer_step

        optimizer_step(self.step_module, self.method, self.optimizer, self.rt,
                       self.next_batch() if batch is None else batch, self.EPOCH, self.step_count, 10**9)
        self.step_count += 1

    def count_flops(self) -> float:
        """FLOPs of one eager step (forward + backward) on the fixed batch."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            with self.rt.autocast():
                out = self.method.training_step(self.fixed, self.EPOCH)
            out.loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def kornia_augment(cfg):
    """kornia.augmentation's equivalent of ``ssl_augment(cfg)``: RandomResizedCrop, flip,
    ColorJitter (p = data.jitter_prob), RandomGrayscale, every parameter drawn per sample."""
    import kornia.augmentation as K

    from mpcl.data.datasets import get_dataset

    d = cfg.data
    s = d.jitter_strength
    size = get_dataset(d.dataset).image_size
    return torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(d.crop_scale_min, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=d.jitter_prob),
        K.RandomGrayscale(p=d.grayscale_prob),
    )


# -- communication counting -------------------------------------------------------------------

def nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    return sum(nbytes(x) for x in t)


class CommCounter:
    """Bytes handed to collectives, by the row being timed (``current``) and category."""

    # torch.distributed function -> (category, position of the tensor(s) it sends)
    WRAPPED = {"all_reduce": ("method", 0), "broadcast": ("method", 0), "all_gather": ("method", 1),
               "all_gather_into_tensor": ("method", 1), "reduce_scatter_tensor": ("method", 1),
               "_broadcast_coalesced": ("buffers", 1)}   # DDP's buffer broadcast

    def __init__(self):
        self.current: str | None = None
        self.bytes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._originals: dict[str, Callable] = {}

    def add(self, category: str, n: int) -> None:
        if self.current is not None:
            self.bytes[self.current][category] += n

    def install(self) -> None:
        import torch.distributed as tdist

        for name, (category, position) in self.WRAPPED.items():
            original = self._originals[name] = getattr(tdist, name)

            def wrapper(*args, _original=original, _category=category, _position=position, **kwargs):
                self.add(_category, nbytes(args[_position]))
                return _original(*args, **kwargs)

            setattr(tdist, name, wrapper)

    def uninstall(self) -> None:
        import torch.distributed as tdist

        for name, original in self._originals.items():
            setattr(tdist, name, original)
        self._originals.clear()

    def attach(self, ddp_module) -> None:
        """DDP's default gradient all-reduce (mean over workers), counted."""
        import torch.distributed as tdist

        all_reduce = self._originals.get("all_reduce", tdist.all_reduce)

        def hook(_state, bucket):
            buf = bucket.buffer()
            self.add("gradients", nbytes(buf))
            buf.div_(tdist.get_world_size())
            return all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

        ddp_module.register_comm_hook(None, hook)


def buffers_agree(method) -> bool:
    """Every worker-consistent buffer of ``method`` is bit-identical on every worker."""
    import torch.distributed as tdist

    digest = hashlib.sha256()
    for name in method.worker_consistent_buffers():
        digest.update(method.get_buffer(name).detach().cpu().contiguous().numpy().tobytes())
    digests = [None] * tdist.get_world_size()
    tdist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1
