"""Classification metrics and their text/PNG renderings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import CLASSES


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def report(labels: np.ndarray, preds: np.ndarray, classes: tuple[str, ...] = CLASSES) -> dict:
    """accuracy (0-1), n, per-class precision/recall/F1/support, confusion matrix (rows: true, in `classes` order)."""
    cm = confusion_matrix(labels, preds, len(classes))
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "n": int(cm.sum()),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(cm[i].sum())}
            for i, c in enumerate(classes)
        },
        "macro_f1": float(f1.mean()),
        "confusion_matrix": cm.tolist(),
    }


def format_report(rep: dict) -> str:
    lines = [f"accuracy {rep['accuracy']:.4f} on {rep['n']} images  (macro F1 {rep['macro_f1']:.4f})", "",
             f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, m in rep["per_class"].items():
        lines.append(f"{c:<10}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    classes = list(rep["per_class"])
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 10 + "".join(f"{c[:8]:>9}" for c in classes)]
    for c, row in zip(classes, rep["confusion_matrix"]):
        lines.append(f"{c:<10}" + "".join(f"{v:>9d}" for v in row))
    return "\n".join(lines)


def plot_confusion(rep: dict, path: str | Path, title: str = "") -> None:
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list

    cm = np.array(rep["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    classes = list(rep["per_class"])
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title or f"accuracy {rep['accuracy']:.3f} (n={rep['n']})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_learning_curve(history: list[dict], path: str | Path, title: str = "") -> None:
    """Train and val loss and accuracy per epoch (a run's EpochStats as dicts), side by side."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6))
    loss, acc = fig.subplots(1, 2)
    for ax, what in ((loss, "loss"), (acc, "acc")):
        ax.plot(epochs, [h[f"train_{what}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{what}"] for h in history], "o-", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if what == "acc" else "loss")
        ax.grid(alpha=0.3)
    acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
