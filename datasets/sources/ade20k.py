"""``ade20k``: the ADE20K scene-parsing benchmark (SceneParsing / ADEChallengeData2016, 150 classes).

Layout (as unpacked from ADEChallengeData2016.zip; ``root`` is that folder or the one holding it)::

    root/images/training/ADE_train_<n>.jpg          RGB
    root/images/validation/ADE_val_<n>.jpg
    root/annotations/training/ADE_train_<n>.png     0 = other / unlabeled, 1..150 the classes
    root/annotations/validation/ADE_val_<n>.png

``training`` becomes split ``train``, ``validation`` split ``val``; every image needs its
annotation. Labels follow mmseg's ``reduce_zero_label`` (as the ANN code's ``reduce_zero_label``):
raw 0 -> 255 (ignore), raw k -> k - 1 (classes 0..149); raw 255 stays ignore; any other value is an
error naming the file.
"""

from __future__ import annotations

from pathlib import Path

from datasets.sources import _common as c
from datasets.sources._segbench import PairSource, reduce_zero_label_table
from datasets.sources.base import SourceError

# The 150 classes of objectInfo150.csv (CSAILVision/sceneparsing) in index order 1..150, each the first
# of its listed names (the csv's Name column lists synonyms: "building, edifice" -> "building").
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
_SPLITS = (("train", "training"), ("val", "validation"))


class Ade20kSource(PairSource):
    name = "ade20k"
    classes = list(ADE20K_CLASSES)
    _lut = reduce_zero_label_table(len(ADE20K_CLASSES))
    _table = "ADE20K's 0..150 (0 = other, 1..150 the objectInfo150 classes; 255 = ignore)"

    def __init__(self, root: str) -> None:
        super().__init__()
        given = c.require_dir(Path(root), "ade20k option root")
        self.root = given / "ADEChallengeData2016" if (given / "ADEChallengeData2016").is_dir() else given
        self._args = {"root": str(root)}
        if not (self.root / "images").is_dir() or not (self.root / "annotations").is_dir():
            raise SourceError(
                f"ade20k: {given} is not the ADEChallengeData2016 layout: expected "
                f"{self.root / 'images'}/{{training,validation}}/ADE_*.jpg and "
                f"{self.root / 'annotations'}/{{training,validation}}/ADE_*.png"
            )
        for split, folder in _SPLITS:
            image_dir = self.root / "images" / folder
            if image_dir.is_dir():
                self._set_split(split, self._index(image_dir, self.root / "annotations" / folder), f"ade20k {split}")
        if not self._pairs:
            raise SourceError(f"ade20k: {self.root / 'images'} holds neither training/ nor validation/")

    def _index(self, image_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
        c.require_dir(label_dir, f"ade20k annotations for {image_dir}")
        images = c.find_by_stem(image_dir, (".jpg",))
        if not images:
            raise SourceError(f"ade20k: {image_dir} holds no ADE_*.jpg image")
        out = []
        for stem, image in images.items():
            label = label_dir / f"{stem}.png"
            if not label.is_file():
                raise SourceError(f"ade20k: image {image} has no annotation {label}")
            out.append((stem, image, label))
        return out
