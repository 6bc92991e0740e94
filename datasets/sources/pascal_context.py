"""``pascal-context``: PASCAL-Context with the 59 most frequent classes (Mottaghi et al., CVPR 2014).

Layout (VOC2010 images; the 59-class label PNGs as mmseg's ``tools/dataset_converters/pascal_context.py``
writes them from trainval_merged.json; ``root`` is ``VOCdevkit``, ``VOCdevkit/VOC2010`` or a folder
holding ``VOCdevkit``)::

    root/JPEGImages/<stem>.jpg                          RGB
    root/SegmentationClassContext/<stem>.png            0 = background (not one of the 59), 1..59 the classes
    root/ImageSets/SegmentationContext/train.txt        one stem per line (4,996 in the full set)
    root/ImageSets/SegmentationContext/val.txt          (5,104)

Labels follow mmseg's ``PascalContextDataset59`` (``reduce_zero_label=True``), as the ANN code does:
raw 0 -> 255 (ignore), raw k -> k - 1 (classes 0..58); raw 255 stays ignore; any other value is an
error naming the file. A stem listed in a split file without its image or label is an error naming
the list, the line and the missing file.
"""

from __future__ import annotations

from pathlib import Path

from datasets.sources import _common as c
from datasets.sources._segbench import PairSource, reduce_zero_label_table
from datasets.sources.base import SourceError

# mmseg's PascalContextDataset59 classes, in label order 1..59.
PASCAL_CONTEXT59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]  # fmt: skip
_LISTS = "ImageSets/SegmentationContext"


def _find_root(given: Path) -> Path:
    for cand in (given, given / "VOC2010", given / "VOCdevkit" / "VOC2010"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise SourceError(
        f"pascal-context: {given} is not the PASCAL-Context layout: expected VOCdevkit/VOC2010/JPEGImages, "
        f"SegmentationClassContext/ and {_LISTS}/{{train,val}}.txt under it"
    )


class PascalContextSource(PairSource):
    name = "pascal-context"
    classes = list(PASCAL_CONTEXT59_CLASSES)
    _lut = reduce_zero_label_table(len(PASCAL_CONTEXT59_CLASSES))
    _table = "PASCAL-Context 59's 0..59 (0 = background, 1..59 the classes; 255 = ignore)"

    def __init__(self, root: str, labels: str = "SegmentationClassContext") -> None:
        super().__init__()
        given = c.require_dir(Path(root), "pascal-context option root")
        self.root = _find_root(given)
        self.label_dir = c.require_dir(self.root / labels, "pascal-context option labels")
        self._args = {"root": str(root), "labels": labels}
        lists: dict[str, list[str]] = {}
        for split in ("train", "val"):
            path = self.root / _LISTS / f"{split}.txt"
            if path.is_file():
                lists[split] = c.read_lines(path, f"pascal-context split {split!r}")
                self._set_split(split, self._index(path, lists[split]), str(path))
        if not self._pairs:
            raise SourceError(
                f"pascal-context: no split list found; expected {self.root / _LISTS / 'train.txt'} and/or val.txt"
            )
        c.check_disjoint(lists, f"pascal-context: {self.root / _LISTS}")

    def _index(self, path: Path, stems: list[str]) -> list[tuple[str, Path, Path]]:
        out = []
        for i, stem in enumerate(stems, start=1):
            image = self.root / "JPEGImages" / f"{stem}.jpg"
            label = self.label_dir / f"{stem}.png"
            for f in (image, label):
                if not f.is_file():
                    raise SourceError(f"{path}:{i}: stem {stem!r} is listed but {f} does not exist")
            out.append((stem, image, label))
        return out
