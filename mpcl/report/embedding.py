"""The run page's map of the embedding: a 2-D t-SNE (openTSNE) of the validation features a
run kept at its end (``embedding.npz``, written by ``mpcl.engine.embedding``), one colour per
class, drawn as ``embedding.png`` beside the page. openTSNE is the optional extra
``mpcl[maps]``; without it the page says so in one line."""

from __future__ import annotations

import html
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpcl.engine.embedding import EMBEDDING_FILE
from mpcl.report.page import ReportError, img_tag, pyplot, save_png

MAPS_EXTRA = "pip install 'mpcl[maps]'"
MAP_SEED = 0
MIN_POINTS = 5   # fewer and t-SNE's neighbourhoods are meaningless


@dataclass
class Embedding:
    features: np.ndarray        # (n, d) float32
    labels: np.ndarray          # (n,) int64
    epoch: int
    class_names: list[str]      # in label order; empty when unknown

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class {label}"


def read_embedding(path: Path) -> Embedding:
    """``embedding.npz``; a damaged or foreign file is a one-line :class:`ReportError`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            features = np.asarray(z["features"], dtype=np.float32)
            labels = np.asarray(z["labels"]).astype(np.int64)
            epoch = int(z["epoch"])
            names = [str(s) for s in z["class_names"]] if "class_names" in z.files else []
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ReportError(f"{path}: not a readable embedding file ({type(e).__name__})") from None
    if features.ndim != 2 or labels.shape != (features.shape[0],) or not np.isfinite(features).all():
        raise ReportError(f"{path}: features {features.shape} and labels {labels.shape} do not match")
    return Embedding(features, labels, epoch, names)


def tsne_map(features: np.ndarray, seed: int = MAP_SEED) -> np.ndarray:
    """(n, 2) t-SNE coordinates of ``features``: seeded and single-threaded, so a page drawn
    twice shows the same map. Needs openTSNE (ImportError without it)."""
    from openTSNE import TSNE

    perplexity = min(30.0, (len(features) - 1) / 3)   # openTSNE's default, lowered for few points
    return np.asarray(TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=1,
                           verbose=False).fit(features))


def draw_map(coords: np.ndarray, emb: Embedding, title: str, out_dir: Path):
    """One scatter per class (its legend entry the class name), saved as ``embedding.png``."""
    plt = pyplot()
    classes = np.unique(emb.labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo")
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, c in enumerate(classes):
        at = emb.labels == c
        colour = cmap(i) if len(classes) <= 20 else cmap(i / max(len(classes) - 1, 1))
        ax.scatter(coords[at, 0], coords[at, 1], s=4, color=colour, label=emb.class_name(int(c)))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    return save_png(fig, out_dir, "embedding")


def embedding_section(run_dir: Path, out_dir: Path) -> list[str]:
    """The page's "Embedding" section; nothing for a run without ``embedding.npz``."""
    path = run_dir / EMBEDDING_FILE
    if not path.is_file():
        return []
    head = "<h2>Embedding</h2>"
    try:
        emb = read_embedding(path)
    except ReportError as e:
        return [head, f'<p class="note">{html.escape(str(e))}</p>']
    n = len(emb.labels)
    if n < MIN_POINTS:
        return [head, f'<p class="note">{n} validation points in {EMBEDDING_FILE}: too few for a map.</p>']
    try:
        coords = tsne_map(emb.features)
    except ImportError:
        return [head, f'<p class="note">The map of the validation features needs openTSNE: '
                      f'<code>{html.escape(MAPS_EXTRA)}</code></p>']
    title = f"t-SNE (openTSNE) of {n} validation features, epoch {emb.epoch}"
    return [head, f"<p>{html.escape(title)}, coloured by class (<code>{EMBEDDING_FILE}</code>).</p>",
            img_tag(draw_map(coords, emb, title, out_dir))]
