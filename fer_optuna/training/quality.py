"""What to know about a FER2013 source before training on it, and leaving the worst of it out.

FER2013 has blank images, exact duplicates within a split, faces that appear in two
splits (a test face also in Training inflates test accuracy) and identical faces with
different labels. `fer-opt data inspect` reports them; `drop_blank` and `drop_cross_split`
leave them out of the train split only, so that val and test figures stay comparable
with everyone else's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .data import SPLITS, FerData


def _pixel_groups(data: FerData) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(splits, split index per row, label per row, group id per row: rows with identical pixels share one)."""
    splits = [s for s in SPLITS if s in data.images]
    flat = np.concatenate([data.images[s].reshape(len(data.images[s]), -1) for s in splits])
    keys = np.ascontiguousarray(flat).view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, group = np.unique(keys, return_inverse=True)
    split_of = np.concatenate([np.full(len(data.labels[s]), i) for i, s in enumerate(splits)])
    return splits, split_of, np.concatenate([data.labels[s] for s in splits]), group.ravel()


def quality(data: FerData) -> dict:
    """What to know before training: blank images, exact duplicates within and across splits
    (a test face also in Training inflates test accuracy), and duplicates whose labels disagree."""
    splits, split_of, labels, group = _pixel_groups(data)
    report: dict = {"blank": {}, "duplicates": {}, "cross_split": {}}
    for i, s in enumerate(splits):
        images = data.images[s].reshape(len(data.images[s]), -1)
        report["blank"][s] = int((images.min(1) == images.max(1)).sum())
        sizes = np.bincount(group[split_of == i])
        sizes = sizes[sizes > 1]
        report["duplicates"][s] = {"groups": len(sizes), "extra_copies": int((sizes - 1).sum())}
    for i, a in enumerate(splits):
        for j in range(i + 1, len(splits)):
            shared = np.intersect1d(group[split_of == i], group[split_of == j])
            report["cross_split"][f"{a}/{splits[j]}"] = {
                "groups": len(shared), f"{splits[j]}_images": int(np.isin(group[split_of == j], shared).sum())}
    order = np.lexsort((labels, group))
    g, lab = group[order], labels[order]
    conflicting = np.unique(g[1:][(g[1:] == g[:-1]) & (lab[1:] != lab[:-1])])
    report["conflicting_labels"] = {"groups": len(conflicting), "images": int(np.isin(group, conflicting).sum())}
    return report


def clean(data: FerData, drop_blank: bool, drop_cross_split: bool) -> FerData:
    """Training images without the blank ones and/or without those whose pixels also appear in val or test.
    The val and test splits stay whole, so that their figures compare with everyone else's."""
    if not (drop_blank or drop_cross_split) or "train" not in data.images:
        return data
    splits, split_of, _, group = _pixel_groups(data)
    train = split_of == splits.index("train")
    images = data.images["train"].reshape(int(train.sum()), -1)
    keep = np.ones(len(images), bool)
    notes = []
    if drop_blank:
        blank = images.min(1) == images.max(1)
        keep &= ~blank
        notes.append(f"dropped {int(blank.sum())} blank train images")
    if drop_cross_split:
        leaked = np.isin(group[train], group[~train])
        keep &= ~leaked
        notes.append(f"dropped {int(leaked.sum())} train images that also appear in {', '.join(splits[1:])}")
    return dataclasses.replace(
        data, images={**data.images, "train": data.images["train"][keep]},
        labels={**data.labels, "train": data.labels["train"][keep]}, notes=data.notes + tuple(notes),
        soft=data.soft[keep] if data.soft is not None else None)


def inspect(data: FerData) -> dict:
    """Counts per split and class, the quality checks, the source's notes and where its cache lives."""
    return {"source": data.source, "classes": list(data.classes),
            "counts": {s: row.tolist() for s, row in data.counts().items()}, **quality(data),
            "notes": list(data.notes), "cache": data.cache_file or None}


def format_inspect(report: dict) -> str:
    lines = [f"{'split':<8}" + "".join(f"{c:>10}" for c in report["classes"]) + f"{'total':>10}"]
    for split, row in report["counts"].items():
        lines.append(f"{split:<8}" + "".join(f"{v:>10d}" for v in row) + f"{sum(row):>10d}")
    lines.append("blank images (one value): " + ", ".join(f"{s} {n}" for s, n in report["blank"].items()))
    lines.append("exact duplicates: " + ", ".join(f"{s} {d['extra_copies']} extra copies in {d['groups']} groups"
                                                  for s, d in report["duplicates"].items()))
    for pair, d in report["cross_split"].items():
        later = pair.split("/")[1]
        lines.append(f"in two splits ({pair}): {d['groups']} distinct images, {d[f'{later}_images']} of the {later} images")
    c = report["conflicting_labels"]
    lines.append(f"conflicting labels: {c['groups']} groups of identical images ({c['images']} images) disagree")
    lines += [f"note: {note}" for note in report["notes"]]
    if "test" not in report["counts"]:
        lines.append("note: no test split (PrivateTest) in this source; `evaluate --split test` needs one")
    lines.append(f"cache: {report['cache'] or 'none (the cache folder is not writable)'}")
    return "\n".join(lines)
