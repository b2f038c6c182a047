"""Contrastive learning in feature space as message passing, simulated on a visible graph.

``graph`` builds augmentation graphs (synthetic latent classes, or Fashion-MNIST views),
``messages`` the feature-space loss and its gradient step computed as message passing,
``metrics`` what is tracked, ``simulate`` the dynamics of each variant, ``runner`` the
``run.py dynamics`` command (its page: ``mpcl.report.dynamics``). Pure torch, float64.
"""

from mpcl.dynamics.graph import AugmentationGraph, GraphError, fashion_mnist_graph, synthetic_graph
from mpcl.dynamics.messages import Variant, feature_loss, messages
from mpcl.dynamics.simulate import Settings, default_variants, simulate

__all__ = ["AugmentationGraph", "GraphError", "Settings", "Variant", "default_variants", "fashion_mnist_graph",
           "feature_loss", "messages", "simulate", "synthetic_graph"]
