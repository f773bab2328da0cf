"""Labelled evaluation sets: Fashion-MNIST IDX files, an image folder per class, or WebDataset tars with labels.

Images stay encoded (bytes) or raw (uint8 arrays) until features are computed, so a large set is never held decoded.
Class names, in label order, come from `--classnames FILE`, else ``DATA/classnames.txt``, else the folder names
(image folders) or Fashion-MNIST's names (IDX files).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xclr_schemas.fashion_mnist import FASHION_MNIST_CLASSES, idx_files, read_idx
from xclr_schemas.shards import IMAGE_SUFFIXES, META_SUFFIX
from xclr_train.data import DataError, find_shards, read_tar

FOLDER_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class EvalSetError(ValueError):
    """An evaluation set that cannot be used (the message is one line, for the user)."""


@dataclass
class EvalSet:
    images: list  # encoded image bytes, or uint8 arrays (IDX)
    labels: np.ndarray  # int64 (n,), indices into classnames
    classnames: list[str]
    skipped: Counter = field(default_factory=Counter)  # reason -> samples not in `images`


def load_eval_set(spec: str, classnames_file: Path | None = None, split: str = "test",
                  limit: int | None = None) -> EvalSet:
    """The evaluation set at `spec` (first `limit` samples), with every sample's label checked against the names."""
    path = Path(spec)
    idx = idx_files(path, split) if path.is_dir() else None
    if idx is not None:
        images, labels = read_idx(*idx)
        evalset = EvalSet(list(images[:limit]), labels[:limit].astype(np.int64), list(FASHION_MNIST_CLASSES))
    elif path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        evalset = _image_folder(path, limit)
    else:
        evalset = _shards(spec, limit)
    names_file = classnames_file or (path / "classnames.txt" if path.is_dir() else None)
    if names_file is not None and names_file.is_file():
        evalset.classnames = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines()
                              if line.strip()]
    elif classnames_file is not None:
        raise EvalSetError(f"--classnames {classnames_file} does not exist")
    if not evalset.images:
        raise EvalSetError(f"no labelled images in {spec} (skipped: {dict(evalset.skipped) or 'none'})")
    if not evalset.classnames:
        raise EvalSetError(f"no class names for {spec}: give --classnames FILE (one name per line, in label order)")
    if evalset.labels.max() >= len(evalset.classnames):
        raise EvalSetError(f"label {evalset.labels.max()} in {spec} but only {len(evalset.classnames)} class names")
    return evalset


def _image_folder(root: Path, limit: int | None) -> EvalSet:
    classnames = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classnames):
        for file in sorted((root / name).rglob("*")):
            if file.suffix.lower() in FOLDER_IMAGE_SUFFIXES and file.is_file():
                images.append(file.read_bytes())
                labels.append(label)
    return EvalSet(images[:limit], np.array(labels[:limit], dtype=np.int64), classnames)


def _shards(spec: str, limit: int | None) -> EvalSet:
    """Tar samples with an image and an integer ``label`` in KEY.json; others are skipped and counted."""
    try:
        urls = find_shards(spec).urls
    except DataError as exc:
        raise EvalSetError(f"{spec} is not an evaluation set: not Fashion-MNIST IDX files, an image folder per class "
                           f"or WebDataset tars ({exc})") from None
    skipped: Counter = Counter()
    images, labels = [], []
    for url in urls:
        for sample in read_tar(url, skipped):
            image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
            try:
                label = json.loads(sample[META_SUFFIX])["label"] if META_SUFFIX in sample else None
            except (ValueError, TypeError):
                label = None
            if image is None:
                skipped["no_image"] += 1
            elif not isinstance(label, int) or label < 0:
                skipped["no_label"] += 1
            else:
                images.append(image)
                labels.append(label)
            if len(images) == limit:
                return EvalSet(images, np.array(labels, dtype=np.int64), [], skipped)
    return EvalSet(images, np.array(labels, dtype=np.int64), [], skipped)
