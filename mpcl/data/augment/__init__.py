"""SSL augmentations applied to whole batches on the training device.

Every transform takes a batch ``x`` of shape ``(B, 3, H, W)``, ``uint8`` (0..255) or float in
``[0, 1]``, on any device, and returns a float batch (``float32`` for ``uint8`` input, else the
input dtype) with values in ``[0, 1]`` (before the optional mean/std normalisation).

Semantics follow torchvision (``torchvision.transforms.v2.functional``) so a recipe means what
it means in the papers: random resized crop and flip (:mod:`.crop`), colour jitter with factors
uniform in ``[max(0, 1 - s), 1 + s]`` (hue in ``[-h, h]``), each op clamping to ``[0, 1]``,
the four ops in a random order **drawn per sample** (:mod:`.jitter`), grayscale (ITU-R 601-2
luma), solarize (``x >= t -> 1 - x``) and normalize (:mod:`.colour`), gaussian blur with
torchvision's kernel and reflect padding (:mod:`.blur`). :class:`SSLAugment` chains them into
one view (:mod:`.modules`).

Every random parameter, including each "apply with probability p" coin, is drawn
independently per sample. Randomness comes from ``generator`` (a ``torch.Generator``; best on
``x``'s device; a CPU generator also works for CUDA batches: parameters are then drawn on the
CPU and copied through pinned memory) or, when it is ``None``, from torch's default generator
of ``x``'s device. The same seed gives the same output, whatever the block size. On
accelerators nothing here reads a tensor value back to the host (no ``.item()``, no
data-dependent shapes, no blocking host->device copies), so the transforms never synchronise
the stream; only the CPU path uses data-dependent shapes (blur of the selected samples only).

On CPU the fused pipeline (``SSLAugment``, ``color_jitter``) works through the batch in blocks
of about 1.5 MB (cache-sized, at least 8 samples); on accelerators the whole batch is one block.
On CPU ``SSLAugment`` runs its colour stage (jitter + grayscale) as one compiled per-sample
kernel instead (:mod:`.colour_cpu`; ``cpu_kernel=False`` for the eager ops): same parameters,
same result to float rounding. :func:`mpcl.data.process.keep_freed_memory` is the allocator
setting that matters on CPU.
"""

from mpcl.data.augment.blur import apply_gaussian_blur, blur_kernel_size, gaussian_blur
from mpcl.data.augment.colour import (adjust_brightness, adjust_contrast, adjust_hue,
                                      adjust_saturation, normalize, random_grayscale,
                                      rgb_to_grayscale, solarize)
from mpcl.data.augment.constants import BRIGHTNESS, CONTRAST, GRAY_WEIGHTS, HUE, SATURATION
from mpcl.data.augment.crop import random_flip, random_resized_crop, resized_crop, sample_crop_boxes
from mpcl.data.augment.jitter import (JitterParams, apply_color_jitter, color_jitter,
                                      sample_jitter_params)
from mpcl.data.augment.modules import EvalTransform, SSLAugment
from mpcl.data.augment.tensors import to_float

__all__ = [
    "BRIGHTNESS", "CONTRAST", "GRAY_WEIGHTS", "HUE", "SATURATION",
    "JitterParams", "SSLAugment", "EvalTransform",
    "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation",
    "apply_color_jitter", "apply_gaussian_blur", "blur_kernel_size", "color_jitter",
    "gaussian_blur", "normalize", "random_flip", "random_grayscale", "random_resized_crop",
    "resized_crop", "rgb_to_grayscale", "sample_crop_boxes", "sample_jitter_params",
    "solarize", "to_float",
]
