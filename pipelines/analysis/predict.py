"""``fusionpipe predict``: run a trained model on a folder of images or a shard split and write its outputs.

The model is a checkpoint directory, an MLflow run id (its best checkpoint) or a registered version
(``models:/NAME/VERSION``, ``models:/NAME@ALIAS``: the best checkpoint of the run it was logged in). The
checkpoint's meta.json gives the model, its tasks, modalities and class names, and the normalisation its
inputs had in training (:data:`DEFAULT_NORMALISATION` for checkpoints that do not record one): the tool
applies it, the user gives plain images.

Inputs of any size: each is padded on the bottom and right to a multiple of :data:`STRIDE` (the coarsest
backbone stride) and the outputs are cropped back. Depth (for a model with the ``depth`` modality) is a
16-bit PNG in millimetres, as in the shards (docs/data-format.md): ``<stem>.depth.png`` beside
``<stem>.png``/``.jpg``, or ``<stem>.png`` in a parallel folder given as ``depth_dir``.

Outputs per sample, in ``out`` (docs/predict.md): ``<id>.semseg.png`` (classes in the palette of
``classes.json``), ``<id>.semseg_ids.png`` (class ids), ``<id>.depth.png`` (16-bit millimetres, the shard
format), ``<id>.depth_color.png``, ``<id>.normals.png``, ``<id>.edge.png``, and ``<id>.grid.png`` (the
input and every output side by side); ``classes.json`` and ``predictions.json`` once. Every file is
written to a temporary name and renamed.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from datasets.codec import MEMBERS, ShardFormatError, decode_sample, encode_depth, encode_normals
from datasets.inspect import colorize_depth, colorize_semseg
from datasets.manifest import ManifestError, load_manifest, write_atomic
from datasets.shards import ShardReadError, iter_shard
from datasets.tario import TarFormatError
from pipelines.analysis.evaluate import _download_checkpoint, resolve_device
from pipelines.checkpoints import build_checkpoint_model, load_model_state, read_meta
from pipelines.config import ConfigError
from pipelines.jsonio import dumps
from pipelines.track.export import NORMALISATION, STRIDE
from pipelines.track.registry import is_model_uri, resolve_model_uri

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: What training fed the model; checkpoints that record no ``normalisation`` in meta.json had this.
DEFAULT_NORMALISATION: dict[str, Any] = NORMALISATION
_RUN_ID = re.compile(r"[0-9a-f]{32}")


class PredictError(ConfigError):
    """Bad input to ``predict``: a folder without images, an image without the depth the model needs, an
    unreadable image, an unknown model."""


@dataclass
class Predictor:
    model: torch.nn.Module
    meta: dict[str, Any]
    source: str

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["model_config"]["tasks"])

    @property
    def modalities(self) -> list[str]:
        return list(self.meta["model_config"]["modalities"])

    @property
    def classes(self) -> list[str]:
        n = int(self.meta["model_config"].get("num_classes", 0))
        names = list(self.meta.get("classes") or [])
        return names if len(names) == n else [*names, *(f"class_{i}" for i in range(len(names), n))][:n]

    @property
    def normalisation(self) -> dict[str, Any]:
        return self.meta.get("normalisation") or DEFAULT_NORMALISATION


def load_predictor(model: str, tracking_uri: str, tmp: str) -> Predictor:
    """The model ``model`` names: a checkpoint directory, an MLflow run id or a ``models:/`` URI."""
    if is_model_uri(model):
        reg = resolve_model_uri(model, tracking_uri)
        ckpt, source = _download_checkpoint(reg.run_id, tracking_uri, tmp), f"{model} (run {reg.run_id})"
    elif Path(model).is_dir():
        ckpt, source = Path(model), model
    elif _RUN_ID.fullmatch(model):
        ckpt, source = _download_checkpoint(model, tracking_uri, tmp), f"runs:/{model}/checkpoints/best"
    else:
        raise PredictError(
            f"--model {model!r}: not a checkpoint directory, an MLflow run id (32 hex digits) or a registered "
            "model (models:/NAME/VERSION, models:/NAME@ALIAS)"
        )
    meta = read_meta(ckpt, require=("model_config",))
    net = build_checkpoint_model(meta["model_config"])  # every weight is in model.pt: no ImageNet file read
    load_model_state(net, ckpt)
    return Predictor(net.eval(), meta, source)


# --------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------
def _read_png16_depth(path: Path, scale: float) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I"):
                raise PredictError(
                    f"{path}: depth must be a 16-bit PNG in millimetres (docs/data-format.md), not mode {im.mode}"
                )
            arr = np.asarray(im, dtype=np.uint16 if im.mode == "I;16" else np.int64)
    except (OSError, UnidentifiedImageError) as e:
        raise PredictError(f"{path}: not a readable image ({e})") from None
    return (arr.astype(np.float32) * scale).astype(np.float32)


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise PredictError(f"{path}: not a readable image ({e})") from None


def folder_samples(
    images: str | os.PathLike[str], modalities: list[str], depth_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """The samples of a folder: one per ``*.png``/``*.jpg`` (``*.depth.png`` files are depth, not images),
    each with the modalities the model needs. Checked before anything runs: a folder without images, an
    image without its depth is a PredictError naming it."""
    root = Path(images)
    if not root.is_dir():
        raise PredictError(f"--images {root}: not a directory")
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(".depth.png")
    )
    if not files:
        raise PredictError(f"--images {root}: no images (*.png, *.jpg, *.jpeg; *.depth.png files are depth)")
    if depth_dir is not None and not Path(depth_dir).is_dir():
        raise PredictError(f"--depth-dir {depth_dir}: not a directory")
    out, lacking = [], []
    for f in files:
        depth = Path(depth_dir) / f"{f.stem}.png" if depth_dir is not None else f.with_name(f"{f.stem}.depth.png")
        if "depth" in modalities and not depth.is_file():
            lacking.append(f"{f.name} (no {depth})")
        out.append({"id": f.stem, "rgb_path": f, "depth_path": depth})
    if lacking:
        rule = (
            f"<stem>.png in {depth_dir}" if depth_dir is not None else f"<stem>.depth.png beside each image in {root}"
        )
        raise PredictError(
            f"the model takes depth ({', '.join(modalities)}); {len(lacking)} image(s) have none ({rule}, 16-bit PNG "
            f"in millimetres): {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}"
        )
    return out


def _load_folder_sample(s: dict[str, Any], modalities: list[str], depth_scale: float) -> dict[str, Any]:
    sample: dict[str, Any] = {"id": s["id"]}
    sample["rgb"] = _read_rgb(s["rgb_path"])  # also for a depth-only model: it names the sample and is drawn
    if "depth" in modalities:
        d = _read_png16_depth(s["depth_path"], depth_scale)
        if d.shape != sample["rgb"].shape[:2]:
            raise PredictError(
                f"{s['depth_path']}: {d.shape[1]}x{d.shape[0]} pixels, its image {s['rgb_path']} "
                f"{sample['rgb'].shape[1]}x{sample['rgb'].shape[0]}"
            )
        sample["depth"] = d
    return sample


def shard_samples(shards: str | os.PathLike[str], split: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The decoded samples of a shard split, each checked against the manifest."""
    root = Path(shards)
    try:
        manifest = load_manifest(root)
    except ManifestError as e:
        raise PredictError(f"--shards: {e}") from None
    if split not in manifest["splits"]:
        raise PredictError(f"--shards {root}: no split {split!r}; splits: {', '.join(sorted(manifest['splits']))}")
    n = 0
    for shard in manifest["splits"][split]["shards"]:
        for key, members in iter_shard(root / shard["path"], shard):
            sample = decode_sample(members, f"{shard['path']} key {key!r}")
            yield {"id": key, **{k: v for k, v in sample.items() if k in ("rgb", "depth")}}
            n += 1
            if limit is not None and n >= limit:
                return


# --------------------------------------------------------------------------------------------------------
# The forward pass
# --------------------------------------------------------------------------------------------------------
def model_inputs(sample: dict[str, Any], modalities: list[str], norm: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's inputs for one sample (batch of 1), normalised as in training."""
    inputs = {}
    for m in modalities:
        if m not in sample:
            raise PredictError(f"sample {sample['id']}: the model takes {m!r}, the input has none")
        if m == "rgb":
            rn = norm["rgb"]
            x = torch.from_numpy(np.array(sample["rgb"], dtype=np.uint8)).permute(2, 0, 1).float() * float(rn["scale"])
            mean = torch.tensor(rn["mean"], dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(rn["std"], dtype=torch.float32).view(3, 1, 1)
            inputs[m] = ((x - mean) / std).unsqueeze(0)
        else:
            inputs[m] = torch.from_numpy(np.ascontiguousarray(sample[m], dtype=np.float32))[None, None]
    return inputs


@torch.no_grad()
def forward_any_size(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], tasks: list[str]
) -> dict[str, torch.Tensor]:
    """The model's task outputs at the inputs' own H×W: padded with zeros (the mean colour after
    normalisation; missing depth) on the bottom and right to a multiple of :data:`STRIDE`, cropped back."""
    h, w = next(iter(inputs.values())).shape[-2:]
    ph, pw = (-h) % STRIDE, (-w) % STRIDE
    out = model({k: F.pad(v, (0, pw, 0, ph)) for k, v in inputs.items()})
    return {t: out[t][..., :h, :w].float() for t in tasks}


# --------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------
def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def task_images(task: str, pred: torch.Tensor) -> dict[str, np.ndarray]:
    """One task's output (C×H×W) as the images written for it: ``{suffix: array}``; the first is the one
    drawn in the grid."""
    kind = MEMBERS[task].kind if task in MEMBERS else "gray"
    if kind == "labels":
        ids = pred.argmax(0).numpy().astype(np.uint8)
        return {task: colorize_semseg(ids), f"{task}_ids": ids}
    if kind == "scalar16":
        v = pred[0].clamp(min=0).numpy()
        scale = MEMBERS[task].scale
        png16 = encode_depth(v) if task == "depth" else np.clip(np.rint(v / scale), 0, 65535).astype(np.uint16)
        return {f"{task}_color": colorize_depth(v), task: png16}
    if kind == "normals":
        n = F.normalize(pred, dim=0).permute(1, 2, 0).numpy()
        return {task: encode_normals(n)}
    prob = torch.sigmoid(pred[0]).numpy()  # binary and gray tasks are trained as logits
    return {task: np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)}


def _grid(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    from PIL import ImageDraw

    h, w = panels[0][1].shape[:2]
    header = 14
    img = Image.new("RGB", (w * len(panels), h + header), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (name, arr) in enumerate(panels):
        a = arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=-1)
        img.paste(Image.fromarray(a.astype(np.uint8)), (i * w, header))
        draw.text((i * w + 3, 1), name, fill=(0, 0, 0))
    return np.asarray(img)


def palette(classes: list[str]) -> list[dict[str, Any]]:
    """Class id, name and the RGB colour ``<id>.semseg.png`` draws it in."""
    colours = colorize_semseg(np.arange(len(classes), dtype=np.uint8))
    return [{"id": i, "name": n, "rgb": [int(c) for c in colours[i]]} for i, n in enumerate(classes)]


def run_predict(
    model: str,
    out: str | os.PathLike[str],
    tracking_uri: str,
    images: str | os.PathLike[str] | None = None,
    depth_dir: str | os.PathLike[str] | None = None,
    shards: str | os.PathLike[str] | None = None,
    split: str = "val",
    limit: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Predict every sample of ``images`` (a folder) or of ``shards``/``split`` into ``out``; the summary."""
    if (images is None) == (shards is None):
        raise PredictError("give exactly one of --images (a folder) and --shards (a dataset, with --split)")
    if depth_dir is not None and images is None:
        raise PredictError("--depth-dir goes with --images")
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        pred = load_predictor(model, tracking_uri, tmp)
    norm = pred.normalisation
    depth_scale = float(norm.get("depth", {}).get("png_scale", MEMBERS["depth"].scale))
    if images is not None:
        listed = folder_samples(images, pred.modalities, depth_dir)[:limit]
        samples: Any = (_load_folder_sample(s, pred.modalities, depth_scale) for s in listed)
    else:
        samples = shard_samples(shards, split, limit)  # type: ignore[arg-type]
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    net = pred.model.to(dev)
    written: list[dict[str, Any]] = []
    try:
        for s in samples:
            inputs = {k: v.to(dev) for k, v in model_inputs(s, pred.modalities, norm).items()}
            outputs = forward_any_size(net, inputs, pred.tasks)
            files, panels = [], []
            if "rgb" in s:
                panels.append(("input rgb", s["rgb"]))
            if "depth" in s and "depth" in pred.modalities:
                panels.append(("input depth", colorize_depth(s["depth"])))
            for task in pred.tasks:
                imgs = task_images(task, outputs[task][0].cpu())
                first = next(iter(imgs))
                panels.append((task, imgs[first] if imgs[first].dtype == np.uint8 else colorize_depth(imgs[first])))
                for suffix, arr in imgs.items():
                    name = f"{s['id']}.{suffix}.png"
                    write_atomic(dest / name, _png_bytes(arr))
                    files.append(name)
            grid = f"{s['id']}.grid.png"
            write_atomic(dest / grid, _png_bytes(_grid(panels)))
            h, w = next(iter(inputs.values())).shape[-2:]
            written.append({"id": s["id"], "height": int(h), "width": int(w), "files": [*files, grid]})
    except (ShardFormatError, ShardReadError, TarFormatError) as e:
        raise PredictError(f"--shards {shards}: {e}") from None
    summary = {
        "model": pred.source,
        "model_name": pred.meta["model_config"]["name"],
        "epoch": pred.meta.get("epoch"),
        "tasks": pred.tasks,
        "modalities": pred.modalities,
        "normalisation": norm,
        "input": str(images) if images is not None else f"{shards} split {split}",
        "out": str(dest),
        "device": str(dev),
        "num_samples": len(written),
        "samples": written,
    }
    if "semseg" in pred.tasks:
        write_atomic(dest / "classes.json", (dumps(palette(pred.classes), indent=2) + "\n").encode())
    write_atomic(dest / "predictions.json", (dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary
