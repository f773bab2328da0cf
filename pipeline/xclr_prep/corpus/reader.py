"""What a corpus reader is: the rows it yields (`RawRow`), the options it reads them with (`CorpusSpec`), and the
registry that finds a reader by format name or file name (`READERS`, `reader_for`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from xclr_prep.errors import PrepError
from xclr_schemas.options import Checked, option

# A located image: (sample index, blob path, byte offset, byte size).
Location = tuple[int, str, int, int]
# What json.loads raises on hostile bytes: invalid JSON, or nesting deeper than Python's recursion limit.
JSON_ERRORS = (ValueError, RecursionError)


@dataclass(frozen=True)
class CorpusSpec(Checked):
    """How to read captions from a corpus (options of `xclr-prep embed`, `xclr_schemas.options`).

    Class-label mode: when `classnames` is set, the caption of a row is ``template.format(classnames[label])``
    (the label may be a class index or a class name); `caption_col` is then not read.
    """
    error = PrepError

    key_col: str = option("key", "Key column (tables; a tar sample's key is its member names' stem).")
    caption_col: str = option("caption", "Caption column (tables; a tar sample's caption is KEY.txt).")
    image_col: str | None = option(None, "Column with an image path or the image bytes.")
    label_col: str | None = option(None, "Label column (tars: field of KEY.json).")
    classnames: tuple[str, ...] | None = None
    template: str = option("a photo of a {}", "Caption template for class-label mode.")

    def check(self) -> None:
        if self.classnames is not None and not self.label_col:
            raise PrepError("--classnames needs --label-col")
        if "{}" not in self.template:
            raise PrepError("--template must contain {}")

    @property
    def class_label_mode(self) -> bool:
        return self.classnames is not None

    def table_columns(self) -> list[str]:
        """The columns a table must have."""
        cols = [self.key_col] + ([] if self.class_label_mode else [self.caption_col])
        return cols + [c for c in (self.image_col, self.label_col) if c]


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str


@dataclass(slots=True)
class RawRow:
    """One input row as read. `error` is a skip reason the reader already knows (e.g. an unparseable line).
    Where its image is: nowhere (`image_source` ""), a file (`image_source`), a member of the tar `image_source`
    (`image_member`), or row `image_row` of the bytes column `image_member` of the table `image_source`."""

    key: object = None
    caption: object = None
    label: object = None
    image_source: str = ""
    image_member: str = ""
    image_row: int = -1
    error: str | None = None


class Reader:
    """One corpus format. Subclasses set `name` and `suffixes` (defining the class does not register it: `READERS`
    lists the instances). `images`: the kind of image reference its rows carry besides plain files ("member" of a
    tar, "column" of image bytes), of which it can tell the byte ranges (`locate`)."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    images: ClassVar[str | None] = None

    def columns(self, path: str) -> list[str] | None:
        """The columns of the file, read from its header only; None where nothing is to be checked."""
        return None

    def rows(self, path: str, spec: CorpusSpec) -> Iterator[RawRow]:
        """The rows of the file, unjudged (`xclr_prep.scan` validates). Raises OSError, tarfile.TarError, ValueError
        or ArrowException when the file is unreadable or truncated: the caller then skips the whole file."""
        raise NotImplementedError

    def stage_name(self, digest: str, part: int) -> str:
        """The file name under which `locate` stages a source (`digest`: of its path) for embed part `part`."""
        raise NotImplementedError

    def locate(self, source: str, refs: list[tuple[str, int]], samples: list[int],
               stage_path: Path) -> list[Location]:
        """Where the images (image_member, image_row) of `source` are, for the samples given; a sample whose image is
        not there (nor its source, or past the damage in it) is left out. Any other error (an OSError such as EIO, a
        store's StorageError) is raised: a read that failed is no missing image. May stage the data at `stage_path` (a
        decompressed tar, a blob of bytes)."""
        raise NotImplementedError
