"""Labelled evaluation sets: Fashion-MNIST IDX files, an image folder per class, or WebDataset tars with labels.

Images stay encoded (bytes) or raw (uint8 arrays) until features are computed, so a large set is never held decoded.
A tar set's labels are KEY.json fields (``label`` unless told otherwise; the first field is the primary one): an
integer field indexes the class names, a string field is its own class name. Class names of the primary integer
field, in label order, come from `--classnames FILE`, else ``DATA/classnames.txt``, else the folder names (image
folders) or Fashion-MNIST's names (IDX files). A tar set also keeps each image's caption (KEY.txt).

A database and a query set (`align`) share class names: a query whose class the database lacks is skipped. `load_sets`
reads both as `xclr-eval` and the trainer's in-run evaluation do; `combine` puts them in one set (database rows
first), and `caption_ids` numbers its captions for caption retrieval.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xclr_schemas import storage
from xclr_schemas.fashion_mnist import FASHION_MNIST_CLASSES, idx_files, read_idx
from xclr_schemas.shards import IMAGE_SUFFIXES, META_SUFFIX
from xclr_train.data import DataError, find_shards, read_tar

FOLDER_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class EvalSetError(ValueError):
    """An evaluation set that cannot be used (the message is one line, for the user)."""


@dataclass
class EvalSet:
    images: list  # encoded image bytes, or uint8 arrays (IDX)
    labels: np.ndarray  # int64 (n,), indices into classnames: the primary label field
    classnames: list[str]
    skipped: Counter = field(default_factory=Counter)  # reason -> samples not in `images`
    captions: list[str] | None = None  # KEY.txt of each image (tar sets; "" where a sample has none)
    more_labels: dict[str, np.ndarray] = field(default_factory=dict)  # further fields: indices into more_classnames
    more_classnames: dict[str, list[str]] = field(default_factory=dict)

    def subset(self, keep: np.ndarray) -> EvalSet:
        """The samples where bool mask `keep` is true, with the same class names and skip counts."""
        return EvalSet([self.images[i] for i in np.flatnonzero(keep)], self.labels[keep], self.classnames,
                       Counter(self.skipped), None if self.captions is None else
                       [self.captions[i] for i in np.flatnonzero(keep)],
                       {f: v[keep] for f, v in self.more_labels.items()}, self.more_classnames)


def load_eval_set(spec: str, classnames_file: Path | None = None, split: str = "test",
                  limit: int | None = None, label_fields: tuple[str, ...] = ("label",)) -> EvalSet:
    """The evaluation set at `spec` (first `limit` samples), with every sample's label checked against the names."""
    path = Path(spec)
    idx = idx_files(path, split) if path.is_dir() else None
    is_folder = idx is None and path.is_dir() and any(p.is_dir() for p in path.iterdir())
    if (idx is not None or is_folder) and label_fields != ("label",):
        raise EvalSetError(f"--label-field is for WebDataset tars; {spec} is an "
                           f"{'IDX' if idx is not None else 'image folder'} set with one label")
    if idx is not None:
        images, labels = read_idx(*idx)
        evalset = EvalSet(list(images[:limit]), labels[:limit].astype(np.int64), list(FASHION_MNIST_CLASSES))
    elif is_folder:
        evalset = _image_folder(path, limit)
    else:
        evalset = _shards(spec, limit, label_fields)
    names_file = classnames_file or (path / "classnames.txt" if path.is_dir() else None)
    if evalset.classnames and idx is None and not is_folder:  # a string label field names its own classes
        if classnames_file is not None:
            raise EvalSetError(f"--classnames is for integer labels; {label_fields[0]!r} in {spec} holds names")
    elif names_file is not None and names_file.is_file():
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


def load_sets(data: str, queries: str | None, classnames: str | None = None, split: str = "test",
              limit: int | None = None, label_fields: tuple[str, ...] = ("label",)) -> tuple[EvalSet, EvalSet | None]:
    """(the database at `data`, the held-out queries at `queries` aligned to its classes, or None); each a local
    path or a URL (fetched), the other arguments as `load_eval_set` takes them."""
    names_file = storage.fetch(classnames) if classnames else None
    database = load_eval_set(str(storage.fetch(data)), names_file, split, limit, label_fields)
    if queries is None:
        return database, None
    return database, align(load_eval_set(str(storage.fetch(queries)), names_file, split, limit, label_fields), database)


def combine(database: EvalSet, queries: EvalSet) -> tuple[EvalSet, np.ndarray]:
    """(one set: the database's rows, then the queries' (aligned to the database's classes), query bool (n,)): the
    queries' captions join only when both sides have them."""
    both = EvalSet(database.images + queries.images, np.concatenate([database.labels, queries.labels]),
                   database.classnames, database.skipped,
                   database.captions + queries.captions if database.captions and queries.captions else None,
                   {f: np.concatenate([v, queries.more_labels[f]]) for f, v in database.more_labels.items()},
                   database.more_classnames)
    return both, np.arange(len(both.images)) >= len(database.images)


def caption_ids(evalset: EvalSet) -> tuple[list[str], np.ndarray] | None:
    """(the distinct captions, sorted; each image's index into them), or None unless every image has a caption."""
    if evalset.captions is None or "" in evalset.captions:
        return None
    texts, ids = np.unique(evalset.captions, return_inverse=True)
    return texts.tolist(), ids


def _image_folder(root: Path, limit: int | None) -> EvalSet:
    classnames = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classnames):
        for file in sorted((root / name).rglob("*")):
            if file.suffix.lower() in FOLDER_IMAGE_SUFFIXES and file.is_file():
                images.append(file.read_bytes())
                labels.append(label)
    return EvalSet(images[:limit], np.array(labels[:limit], dtype=np.int64), classnames)


def align(queries: EvalSet, database: EvalSet) -> EvalSet:
    """`queries` with every label field re-expressed in `database`'s class names; a query whose class (in any
    field) the database lacks is skipped and counted as ``class_not_in_database``."""
    fields = [(queries.labels, queries.classnames, database.classnames)] + [
        (queries.more_labels[f], queries.more_classnames[f], database.more_classnames[f]) for f in queries.more_labels]
    mapped = []
    for values, names, target in fields:
        index = {name: i for i, name in enumerate(target)}
        lookup = np.array([index.get(name, -1) for name in names], dtype=np.int64)
        mapped.append(lookup[values])
    keep = np.all([m >= 0 for m in mapped], axis=0)
    aligned = queries.subset(keep)
    aligned.labels, aligned.classnames = mapped[0][keep], database.classnames
    aligned.more_labels = {f: m[keep] for f, m in zip(queries.more_labels, mapped[1:])}
    aligned.more_classnames = database.more_classnames
    if (~keep).any():
        aligned.skipped["class_not_in_database"] += int((~keep).sum())
    return aligned


def _shards(spec: str, limit: int | None, label_fields: tuple[str, ...]) -> EvalSet:
    """Tar samples with an image and every label field in KEY.json (an integer >= 0 or a non-empty string); others
    are skipped and counted."""
    try:
        urls = find_shards(spec).urls
    except DataError as exc:
        raise EvalSetError(f"{spec} is not an evaluation set: not Fashion-MNIST IDX files, an image folder per class "
                           f"or WebDataset tars ({exc})") from None
    skipped: Counter = Counter()
    images, captions, values = [], [], []
    for url in urls:
        for sample in read_tar(url, skipped):
            image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
            try:
                meta = json.loads(sample[META_SUFFIX]) if META_SUFFIX in sample else {}
                labels = [meta.get(f) for f in label_fields] if isinstance(meta, dict) else [None]
            except (ValueError, TypeError):
                labels = [None]
            if image is None:
                skipped["no_image"] += 1
            elif not all(_is_label(v) for v in labels):
                skipped["no_label"] += 1
            else:
                images.append(image)
                captions.append(sample.get("txt", b"").decode("utf-8", "replace").strip())
                values.append(labels)
            if len(images) == limit:
                break
        if len(images) == limit:
            break
    encoded = [_encode(f, [v[i] for v in values]) for i, f in enumerate(label_fields)]
    primary_names = [] if all(isinstance(v[0], int) for v in values) else encoded[0][1]  # [] = from classnames.txt
    return EvalSet(images, encoded[0][0], primary_names, skipped, captions,
                   {f: e[0] for f, e in zip(label_fields[1:], encoded[1:])},
                   {f: e[1] for f, e in zip(label_fields[1:], encoded[1:])})


def _is_label(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and value.strip() != "")


def _encode(field_name: str, values: list) -> tuple[np.ndarray, list[str]]:
    """(indices, class names) of one field: integers are indices (names from classnames.txt for the primary field,
    else the numbers), strings are names (sorted)."""
    if all(isinstance(v, int) for v in values):
        return np.array(values, dtype=np.int64), [str(i) for i in range(max(values, default=-1) + 1)]
    if not all(isinstance(v, str) for v in values):
        raise EvalSetError(f"KEY.json field {field_name!r} mixes integers and strings")
    names = sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), names
