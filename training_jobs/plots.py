"""Training curves and evaluation plots (ROC, PR, confusion matrix, calibration) as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():  # noqa: ANN202 - matplotlib's module type
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss (train, val) and val AUC per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_auc.plot(epochs, [h["val_auc"] for h in history], color="tab:green")
    ax_auc.set(xlabel="epoch", ylabel="ROC AUC", title="val AUC")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluation_plots(labels: np.ndarray, probs: np.ndarray, threshold: float, out_dir: Path,
                     title: str = "") -> list[Path]:
    """roc.png, pr.png, confusion.png, calibration.png in out_dir; returns their paths."""
    from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    paths = []

    def save(fig, name: str) -> None:  # noqa: ANN001
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        paths.append(out_dir / name)

    both = len(np.unique(labels)) == 2
    fig, ax = plt.subplots(figsize=(4, 4))
    if both:
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(fpr, tpr)
        pred = probs >= threshold
        ax.scatter([pred[labels == 0].mean()], [pred[labels == 1].mean()], color="red", label="threshold", zorder=3)
        ax.legend()
    ax.plot([0, 1], [0, 1], ls="--", color="gray")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC {title}".strip())
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    if both:
        precision, recall, _ = precision_recall_curve(labels, probs)
        ax.plot(recall, precision)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=f"PR {title}".strip())
    save(fig, "pr.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    cm = confusion_matrix(labels, (probs >= threshold).astype(np.int64), labels=[0, 1])
    ax.imshow(cm, cmap="Blues")
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, str(value), ha="center", va="center", color="black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "pneumonia"], yticklabels=["normal", "pneumonia"],
           xlabel="predicted", ylabel="true", title=f"confusion @ {threshold:.3f} {title}".strip())
    save(fig, "confusion.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, 9)
    centers, observed, counts = [], [], []
    for b in range(10):
        mask = which == b
        if mask.any():
            centers.append(probs[mask].mean())
            observed.append(labels[mask].mean())
            counts.append(int(mask.sum()))
    ax.plot([0, 1], [0, 1], ls="--", color="gray")
    ax.plot(centers, observed, color="tab:blue", zorder=1)
    # Marker area ~ images in the bin: a bin of 3 images far from the diagonal matters less than one of 300.
    ax.scatter(centers, observed, s=[20 + 200 * c / max(counts) for c in counts], color="tab:blue", zorder=2)
    for x, y, n in zip(centers, observed, counts, strict=True):
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set(xlabel="predicted P(pneumonia)", ylabel="observed fraction pneumonia", title=f"calibration {title}".strip())
    save(fig, "calibration.png")
    return paths
