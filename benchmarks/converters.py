"""Converter build rate per core at each dataset's native size, next to the PNG-encode limit (docs/benchmarks.md).

For NYUD-MT (480x640), PASCAL-MT (375x500), SUN RGB-D in CEN's layout (530x730), Cityscapes (1024x2048)
and ADE20K (512x683) it writes a fixture tree in the dataset's official layout from the synthetic scene
renderer (smooth images and label maps, like real ones, not noise), then times in one process:

* ``build``: ``write_dataset`` with one worker, everything a build does: reading and decoding the files,
  the conversions, PNG encoding, tar writing and sha256;
* ``encode``: ``codec.encode_sample`` alone over the same samples, already loaded: the PNG encoding a
  build cannot avoid, its upper limit.

Rates are samples per second of this process's CPU time, so they are per-core figures even when other jobs
share the machine (``--workers N`` multiplies them by up to N). The ratio ``<dataset>_build_vs_encode`` =
build rate / encode rate, target >= 0.8 (at most a quarter of a build's time outside the encoding);
``build_vs_encode_min`` is the lowest.

    .venv/bin/python benchmarks/converters.py [--quick] [--json]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import scipy.io  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks._common import emit, parse_args  # noqa: E402
from datasets import codec  # noqa: E402
from datasets.sources.ade20k import Ade20kSource  # noqa: E402
from datasets.sources.base import Source  # noqa: E402
from datasets.sources.cityscapes import CityscapesSource  # noqa: E402
from datasets.sources.nyud_mt import NyudMtSource  # noqa: E402
from datasets.sources.pascal_mt import PascalMtSource  # noqa: E402
from datasets.sources.sunrgbd import SunrgbdSource  # noqa: E402
from datasets.synthetic.render import render  # noqa: E402
from datasets.writer import write_dataset  # noqa: E402

TARGET = 0.8
# Synthetic class k -> a Cityscapes label id (all 13 are evaluated classes), a PASCAL-Context id (some in
# the normals classes, some not), and for PASCAL-Part the part names painted on a person.
CITYSCAPES_IDS = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 26], np.uint8)
CONTEXT_IDS = np.array([440, 158, 2, 360, 427, 72, 18, 284, 59, 187, 368, 96, 115], np.uint16)
PARTS = {1: "head", 2: "torso", 3: "llarm", 4: "ruleg"}


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)


def _jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def _with_ignore(sem: np.ndarray, fill: int) -> np.ndarray:
    return np.where(sem == 255, fill, sem).astype(np.uint8)


def _nyud_mt(root: Path, samples: list[dict[str, Any]]) -> Source:
    for i, s in enumerate(samples):
        stem = f"{i:04d}"
        _jpg(root / "images" / f"{stem}.jpg", s["rgb"])
        _png(root / "segmentation" / f"{stem}.png", np.where(s["semseg"] == 255, 0, s["semseg"] + 1).astype(np.uint8))
        for sub, arr in (("depth", s["depth"]), ("edge", s["edge"].astype(np.float32)), ("normals", s["normals"])):
            (root / sub).mkdir(parents=True, exist_ok=True)
            np.save(root / sub / f"{stem}.npy", arr if sub != "normals" else arr * np.float32([1, 1, -1]))
    (root / "gt_sets").mkdir(parents=True, exist_ok=True)
    (root / "gt_sets" / "train.txt").write_text("".join(f"{i:04d}\n" for i in range(len(samples))))
    return NyudMtSource(str(root))


def _part_anno(stem: str, sem: np.ndarray) -> np.ndarray:
    parts = np.zeros((1, len(PARTS)), dtype=[("part_name", "O"), ("mask", "O")])
    for j, (k, name) in enumerate(PARTS.items()):
        parts[0, j] = (name, (sem == k).astype(np.uint8))
    objects = np.zeros((1, 1), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    objects[0, 0] = ("person", np.array([[15]], np.uint8), (sem < 5).astype(np.uint8), parts)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (stem, objects)
    return anno


def _pascal_mt(root: Path, samples: list[dict[str, Any]]) -> Source:
    for i, s in enumerate(samples):
        stem = f"2008_{i:06d}"
        _jpg(root / "JPEGImages" / f"{stem}.jpg", s["rgb"])
        _png(root / "semseg" / "pascal-context" / f"{stem}.png", s["semseg"])  # ids 0..12 of the 21, 255
        _png(root / "sal_distill" / f"{stem}.png", (s["depth"] < np.median(s["depth"])).astype(np.uint8) * 255)
        _png(root / "normals_distill" / f"{stem}.png", codec.encode_normals(s["normals"]))
        (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
        label_map = CONTEXT_IDS[np.where(s["semseg"] == 255, 0, s["semseg"])]
        scipy.io.savemat(str(root / "pascal-context" / "trainval" / f"{stem}.mat"), {"LabelMap": label_map})
        (root / "human_parts").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(root / "human_parts" / f"{stem}.mat"), {"anno": _part_anno(stem, s["semseg"])})
    (root / "ImageSets" / "Context").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("".join(f"2008_{i:06d}\n" for i in range(len(samples))))
    return PascalMtSource(str(root))


def _sunrgbd(root: Path, samples: list[dict[str, Any]]) -> Source:
    lines = []
    for i, s in enumerate(samples):
        stem = f"{i + 1:06d}"
        _jpg(root / "rgb" / f"{stem}.jpg", s["rgb"])
        _png(root / "masks" / f"{stem}.png", s["semseg"])
        mm = np.rint(s["depth"] * 1000).astype(np.uint32)
        _png(root / "depth" / f"{stem}.png", (((mm << 3) | (mm >> 13)) & 0xFFFF).astype(np.uint16))
        lines.append(f"rgb/{stem}.jpg\tmasks/{stem}.png\tdepth/{stem}.png\n")
    (root / "train.txt").write_text("".join(lines))
    return SunrgbdSource(str(root))


def _cityscapes(root: Path, samples: list[dict[str, Any]]) -> Source:
    for i, s in enumerate(samples):
        stem = f"aachen_{i:06d}_000019"
        _png(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", s["rgb"])
        ids = CITYSCAPES_IDS[np.where(s["semseg"] == 255, 0, s["semseg"])]
        _png(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", np.where(s["semseg"] == 255, 0, ids))
    return CityscapesSource(str(root))


def _ade20k(root: Path, samples: list[dict[str, Any]]) -> Source:
    for i, s in enumerate(samples):
        stem = f"ADE_train_{i + 1:08d}"
        _jpg(root / "images" / "training" / f"{stem}.jpg", s["rgb"])
        _png(root / "annotations" / "training" / f"{stem}.png", np.where(s["semseg"] == 255, 0, s["semseg"] + 1))
    return Ade20kSource(str(root))


# name, (H, W) native size, fixture writer, samples (full, quick)
DATASETS: list[tuple[str, tuple[int, int], Callable[[Path, list[dict[str, Any]]], Source], tuple[int, int]]] = [
    ("nyud-mt", (480, 640), _nyud_mt, (24, 2)),
    ("pascal-mt", (375, 500), _pascal_mt, (24, 2)),
    ("sunrgbd", (530, 730), _sunrgbd, (24, 2)),
    ("cityscapes", (1024, 2048), _cityscapes, (8, 1)),
    ("ade20k", (512, 683), _ade20k, (16, 2)),
]


def _cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(name: str, hw: tuple[int, int], make: Callable[..., Source], n: int, tmp: Path) -> dict[str, Any]:
    samples = [render(0, "train", i, *hw) for i in range(n)]
    source = make(tmp / name / "src", samples)
    keys = source.keys("train")
    source.load("train", keys[0])  # warm-up: imports, allocator, look-up tables
    build_cpu, build_wall = _cpu(
        lambda: write_dataset(source, tmp / name / "out", shard_size=n, workers=1, progress=False)
    )
    loaded = [source.load("train", k) for k in keys]
    codec.encode_sample(loaded[0])
    encode_cpu, _ = _cpu(lambda: [codec.encode_sample(s) for s in loaded])
    shard_bytes = (tmp / name / "out" / "train" / "shard-000000.tar").stat().st_size
    shutil.rmtree(tmp / name)
    build, encode = n / build_cpu, n / encode_cpu
    return {
        "name": name,
        "height": hw[0],
        "width": hw[1],
        "samples": n,
        "members": list(source.members),
        "build_samples_per_s_cpu": round(build, 3),
        "build_samples_per_s_wall": round(n / build_wall, 3),
        "encode_samples_per_s_cpu": round(encode, 3),
        "build_cpu_ms_per_sample": round(1000 * build_cpu / n, 1),
        "encode_cpu_ms_per_sample": round(1000 * encode_cpu / n, 1),
        "build_vs_encode": round(build / encode, 3),
        "encoded_kib_per_sample": round(shard_bytes / n / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    cv2.setNumThreads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="fusionpipe-bench-converters-") as tmp:
        for name, hw, make, (full, quick) in DATASETS:
            results.append(measure(name, hw, make, quick if args.quick else full, Path(tmp)))
    ratios = {f"{r['name']}_build_vs_encode": r["build_vs_encode"] for r in results}
    ratios["build_vs_encode_min"] = min(r["build_vs_encode"] for r in results)
    ratios["target"] = TARGET
    emit("converters", results, ratios, args.json)


if __name__ == "__main__":
    main()
