"""mpcl: contrastive self-supervised learning at cluster scale.

Nothing here imports torch, ray or ffcv at import time beyond what a submodule needs;
nothing downloads and nothing needs a GPU to import.
"""

__version__ = "0.1.0"
