"""Joint augmentation of RGB-D multi-task samples and conversion to tensors.

Every map of a sample (datasets/codec.py ``MEMBERS``: rgb, depth, semseg, normals, edge, parts, sal and
any registered member) goes through ONE affine warp built from one sampled parameter set (flip,
scale, rotate, crop/pad, resize), applied with OpenCV: rgb bilinear (area pre-shrink when the warp
shrinks), every other map nearest, so an output value is always an input value or the padding value.
Photometric transforms (colour jitter, Gaussian noise, blur) come from albumentations 2.0.8 and
touch rgb only. Geometry is done here rather than through albumentations because albumentations
moves pixels but never changes vector values: normals need the warp's linear part, which we own.

The recipe follows the MTI-Net experiments (Vandenhende et al., ECCV 2020, Sec. 4) as run by
their official code (``data/custom_transforms.py``: ``ScaleNRotate``, ``RandomHorizontalFlip``,
``FixedResize``).
Deliberate differences from that code: depth and labels are resampled nearest (it uses cubic for
depth, which invents values across holes and object borders); metric depth is kept under scaling
and ``meta["intrinsics"]`` is updated instead (its ``ScaleNRotate`` divides depth by the scale);
normals are corrected for every linear warp, anisotropic resizes included. See docs/augmentation.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from datasets.codec import MEMBERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODALITIES = ("rgb", "depth")
# Padding marks "no data" (codec.Member.pad): missing depth, ignored classes, normals (0,0,0) = missing; sal
# has no ignore value in the shard format, so padded saliency reads as "not salient".


def target_members() -> list[str]:
    """The members a task may take its targets from: every registered member except ``rgb``."""
    return [name for name in MEMBERS if name != "rgb"]


class SampleError(ValueError):
    """A sample that cannot be transformed or converted; the message names the member and sample id."""


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(lo: float, hi: float, what: str, low_bound: float, high_bound: float) -> None:
    if not low_bound <= lo <= hi <= high_bound:
        raise ValueError(f"{what} must satisfy {low_bound} <= min <= max <= {high_bound}, got ({lo}, {hi})")


class Rotate(_Strict):
    """In-plane rotation by an angle drawn uniformly from [-degrees, degrees] with probability p."""

    degrees: float = Field(gt=0, le=180)
    p: float = Field(0.5, ge=0, le=1)


class ColorJitter(_Strict):
    """Brightness/contrast/saturation factors in [1-x, 1+x], hue shift in [-hue, hue] (albumentations)."""

    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.4, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    p: float = Field(0.8, ge=0, le=1)


class GaussianNoise(_Strict):
    """Additive noise with standard deviation drawn from ``std`` (fraction of 255)."""

    std: tuple[float, float] = (0.01, 0.05)
    p: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> GaussianNoise:
        _check_range(*self.std, "gaussian_noise.std", 0.0, 1.0)
        return self


class Blur(_Strict):
    """Gaussian blur with sigma drawn from ``sigma`` (pixels); kernel size follows from sigma."""

    sigma: tuple[float, float] = (0.1, 1.5)
    p: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> Blur:
        _check_range(*self.sigma, "blur.sigma", 1e-3, 50.0)
        return self


class AugmentConfig(_Strict):
    """Augmentation settings (the config's ``data.augment`` section); only ``hflip`` is on by default.

    Training order: flip -> scale -> zoom -> rotate -> crop/pad -> resize, then photometric on rgb.
    Evaluation (``train=False``) applies ``resize`` only.
    """

    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    scale: tuple[float, float] | None = Field(None, description="random isotropic scale (min, max)")
    zoom: tuple[float, ...] | None = Field(
        None, description="zoom about the image centre by a factor drawn from this list, keeping the image size"
    )
    rotate: Rotate | None = None
    crop: tuple[PositiveInt, PositiveInt] | None = Field(None, description="random crop (H, W), padded if larger")
    resize: tuple[PositiveInt, PositiveInt] | None = Field(None, description="final resize (H, W), train and eval")
    rgb_pad: Literal["zero", "mean"] = Field("zero", description="rgb padding: 0 or the ImageNet mean")
    color_jitter: ColorJitter | None = None
    gaussian_noise: GaussianNoise | None = None
    blur: Blur | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AugmentConfig:
        if self.scale is not None:
            _check_range(*self.scale, "scale", 1e-3, 1e3)
            if self.crop is None and self.resize is None:
                raise ValueError(
                    "scale changes the image size per sample; set crop or resize so a batch shares one size"
                )
        if self.zoom is not None:
            if not self.zoom:
                raise ValueError("zoom must list at least one factor, e.g. [1.0, 1.2, 1.5]")
            bad = [z for z in self.zoom if not 1e-3 <= z <= 1e3]
            if bad:
                raise ValueError(f"zoom factors must lie in [0.001, 1000], got {bad}")
        return self


# --------------------------------------------------------------------------------------------
# Geometry: 3x3 matrices mapping input pixel centres to output pixel centres (OpenCV convention,
# pixel i spans [i - 0.5, i + 0.5]), composed left-multiplied in the order applied.
# --------------------------------------------------------------------------------------------
def resize_matrix(h: int, w: int, nh: int, nw: int) -> np.ndarray:
    sx, sy = nw / w, nh / h
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def rotation_matrix(h: int, w: int, degrees: float) -> np.ndarray:
    """Counter-clockwise as displayed (y down) about the image centre, like cv2.getRotationMatrix2D."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    return translation_matrix(cx, cy) @ rot @ translation_matrix(-cx, -cy)


def translation_matrix(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class Warp:
    """One sampled geometric transform: ``matrix`` (3x3, input -> output pixels) and output ``size`` (H, W)."""

    matrix: np.ndarray
    size: tuple[int, int]


def sample_warp(cfg: AugmentConfig, train: bool, hw: tuple[int, int], rng: np.random.Generator) -> Warp:
    """Draw the geometric parameters for one sample of size ``hw`` and compose them into one warp."""
    h, w = hw
    m = np.eye(3)
    if train:
        if rng.random() < cfg.hflip:
            m = np.array([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]]) @ m
        if rng.random() < cfg.vflip:
            m = np.array([[1, 0, 0], [0, -1, h - 1], [0, 0, 1]]) @ m
        if cfg.scale is not None:
            s = rng.uniform(*cfg.scale)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            m, h, w = resize_matrix(h, w, nh, nw) @ m, nh, nw
        if cfg.zoom is not None:
            # The official ScaleNRotate with fixed scales and rots=[0]: a zoom about the centre, same size.
            z = float(cfg.zoom[int(rng.integers(len(cfg.zoom)))])
            cx, cy = (w - 1) / 2, (h - 1) / 2
            zoom = np.array([[z, 0, 0], [0, z, 0], [0, 0, 1]], dtype=np.float64)
            m = translation_matrix(cx, cy) @ zoom @ translation_matrix(-cx, -cy) @ m
        if cfg.rotate is not None and rng.random() < cfg.rotate.p:
            m = rotation_matrix(h, w, rng.uniform(-cfg.rotate.degrees, cfg.rotate.degrees)) @ m
        if cfg.crop is not None:
            ch, cw = cfg.crop
            # A negative offset places the image inside a larger padded window.
            y0 = int(rng.integers(min(0, h - ch), max(0, h - ch) + 1))
            x0 = int(rng.integers(min(0, w - cw), max(0, w - cw) + 1))
            m, h, w = translation_matrix(-x0, -y0) @ m, ch, cw
    if cfg.resize is not None:
        m, (h, w) = resize_matrix(h, w, *cfg.resize) @ m, cfg.resize
    return Warp(m, (h, w))


def correct_normals(normals: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Rotate/reflect/stretch camera-frame normals for an image warp with 2x2 linear part ``linear``.

    The warp is lifted to 3-D as L = [[linear, 0], [0, sqrt|det linear|]] and normals, as
    covectors, map by the inverse transpose: n' ∝ L^-T n, renormalised. This gives: flip x ->
    n_x negated; rotation by θ -> (n_x, n_y) rotated by the same θ; isotropic scale -> unchanged;
    diag(s_x, s_y) -> (n_x/s_x, n_y/s_y, n_z/sqrt(s_x s_y)). Missing (0,0,0) stays (0,0,0).
    """
    lift = np.eye(3)
    lift[:2, :2] = linear
    lift[2, 2] = np.sqrt(abs(np.linalg.det(linear)))
    if np.allclose(lift / lift[2, 2], np.eye(3), rtol=0, atol=1e-12):
        # Isotropic scales leave normals unchanged; skipping the renormalisation keeps them bit-exact.
        return normals.copy()
    # Row vectors: (L^-T n)^T = n^T L^-1.
    out = normals @ np.linalg.inv(lift).astype(normals.dtype)
    norm = np.sqrt(np.einsum("...i,...i->...", out, out))[..., None]
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def _warp_map(arr: np.ndarray, m: np.ndarray, size: tuple[int, int], interp: int, pad: Any) -> np.ndarray:
    h, w = size
    return cv2.warpAffine(
        np.ascontiguousarray(arr), m[:2], (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=pad
    )


def _warp_rgb(rgb: np.ndarray, warp: Warp, pad: tuple[float, float, float]) -> np.ndarray:
    """Bilinear warp; when it shrinks an axis, area-resize first so the bilinear step does not alias."""
    lin = warp.matrix[:2, :2]
    ax, ay = min(1.0, float(np.linalg.norm(lin[:, 0]))), min(1.0, float(np.linalg.norm(lin[:, 1])))
    m = warp.matrix
    if ax < 1.0 or ay < 1.0:
        h, w = rgb.shape[:2]
        nh, nw = max(1, round(h * ay)), max(1, round(w * ax))
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        m = m @ np.linalg.inv(resize_matrix(h, w, nh, nw))
    return _warp_map(rgb, m, warp.size, cv2.INTER_LINEAR, pad)


def warp_intrinsics(intrinsics: list[float], matrix: np.ndarray) -> list[float]:
    """[fx, fy, cx, cy] of the warped image: focal lengths times the axis scales, principal point mapped.

    Exact for flips, scales, crops and resizes; for a rotation it is the camera rolled about its
    optical axis (exact when fx == fy), consistent with the rotated normals.
    """
    fx, fy, cx, cy = intrinsics
    lin = matrix[:2, :2]
    px, py, _ = matrix @ np.array([cx, cy, 1.0])
    return [float(fx * np.linalg.norm(lin[:, 0])), float(fy * np.linalg.norm(lin[:, 1])), float(px), float(py)]


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------
def _sample_id(sample: dict[str, Any]) -> str:
    meta = sample.get("meta")
    return str(meta.get("id", "<no meta.id>")) if isinstance(meta, dict) else "<no meta>"


def check_sample(sample: dict[str, Any]) -> tuple[int, int]:
    """Validate keys, dtypes and shapes against the codec's in-memory format; return the map size (H, W)."""
    sid = _sample_id(sample)
    hw: tuple[int, int] | None = None
    for key, value in sample.items():
        if key == "meta":
            if not isinstance(value, dict):
                raise SampleError(f"sample {sid}: 'meta' must be a dict, got {type(value).__name__}")
            continue
        if key not in MEMBERS:
            raise SampleError(f"sample {sid}: unknown member {key!r}; known: {', '.join(MEMBERS)}, meta")
        member = MEMBERS[key]
        if not isinstance(value, np.ndarray) or value.dtype != member.dtype:
            got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise SampleError(f"sample {sid}: member {key!r} must be a {member.dtype} array, got {got}")
        ndim = 3 if member.channels == 3 else 2
        if value.ndim != ndim or (ndim == 3 and value.shape[2] != 3) or 0 in value.shape:
            want = "H×W×3" if ndim == 3 else "H×W"
            raise SampleError(f"sample {sid}: member {key!r} must be {want}, got shape {value.shape}")
        if hw is None:
            hw = value.shape[:2]
        elif value.shape[:2] != hw:
            raise SampleError(f"sample {sid}: member {key!r} is {value.shape[:2]}, other maps are {hw}")
    if hw is None:
        raise SampleError(f"sample {sid}: no image members to transform")
    return hw


def _intrinsics(value: Any, sample: dict[str, Any]) -> list[float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise SampleError(f"sample {_sample_id(sample)}: meta['intrinsics'] must be [fx, fy, cx, cy], got {value!r}")
    return [float(v) for v in value]


def apply_warp(sample: dict[str, Any], warp: Warp, rgb_pad: Literal["zero", "mean"] = "zero") -> dict[str, Any]:
    """Apply one warp to every map of a sample (and its intrinsics); the input is not modified."""
    check_sample(sample)
    m = warp.matrix
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if key == "meta":
            out[key] = dict(value)
            if "intrinsics" in value:
                out[key]["intrinsics"] = warp_intrinsics(_intrinsics(value["intrinsics"], sample), m)
        elif key == "rgb":
            pad = tuple(255.0 * c for c in IMAGENET_MEAN) if rgb_pad == "mean" else (0.0, 0.0, 0.0)
            out[key] = _warp_rgb(value, warp, pad)
        elif MEMBERS[key].kind == "normals":
            moved = _warp_map(value, m, warp.size, cv2.INTER_NEAREST, (0.0, 0.0, 0.0))
            out[key] = correct_normals(moved, m[:2, :2])
        else:  # every other map, rgb-kind targets included: nearest, padded with the kind's "no data"
            out[key] = _warp_map(value, m, warp.size, cv2.INTER_NEAREST, MEMBERS[key].pad)
    return out


def _photometric(cfg: AugmentConfig) -> A.Compose | None:
    ops: list[A.BasicTransform] = []
    if cfg.color_jitter is not None:
        cj = cfg.color_jitter
        ops.append(
            A.ColorJitter(brightness=cj.brightness, contrast=cj.contrast, saturation=cj.saturation, hue=cj.hue, p=cj.p)
        )
    if cfg.gaussian_noise is not None:
        ops.append(A.GaussNoise(std_range=cfg.gaussian_noise.std, p=cfg.gaussian_noise.p))
    if cfg.blur is not None:
        ops.append(A.GaussianBlur(blur_limit=0, sigma_limit=cfg.blur.sigma, p=cfg.blur.p))
    return A.Compose(ops, strict=True) if ops else None


def _draw_warp(
    cfg: AugmentConfig, train: bool, sample: dict[str, Any], rng_seed: int | None
) -> tuple[tuple[int, int], Warp, np.random.SeedSequence]:
    """The sample's size, its warp and the seed of its photometric ops, drawn from ``rng_seed``."""
    if rng_seed is not None and (
        isinstance(rng_seed, bool) or not isinstance(rng_seed, (int, np.integer)) or rng_seed < 0
    ):
        raise SampleError(f"sample {_sample_id(sample)}: rng_seed must be a non-negative int or None, got {rng_seed!r}")
    hw = check_sample(sample)
    geo_seq, photo_seq = np.random.SeedSequence(rng_seed).spawn(2)
    return hw, sample_warp(cfg, train, hw, np.random.default_rng(geo_seq)), photo_seq


@dataclass(frozen=True)
class WarpSampler:
    """Callable ``(sample, rng_seed) -> sample`` for augmentation on the device (``data.augment_on: device``):
    it draws the warp :class:`SampleTransform` would draw for the same seed and applies nothing. The
    sample comes back unresampled, with ``meta["warp"]`` (the 3×3 matrix, input -> output pixels) and
    ``meta["warp_size"]`` (output H, W); the loader hands both on as ``batch["warp"]`` and
    ``batch["warp_size"]``, and :func:`datasets.device_augment.warp_batch` applies them to the batch.
    It has no photometric ops (the config refuses them with ``augment_on: device``).
    """

    cfg: AugmentConfig
    train: bool

    def __call__(self, sample: dict[str, Any], rng_seed: int | None = None) -> dict[str, Any]:
        _, warp, _ = _draw_warp(self.cfg, self.train, sample, rng_seed)
        meta = dict(sample.get("meta") or {})
        meta["warp"], meta["warp_size"] = warp.matrix, warp.size
        return {**sample, "meta": meta}


@dataclass(frozen=True)
class SampleTransform:
    """Callable ``(sample, rng_seed) -> sample``: same keys and dtypes, the input left untouched."""

    cfg: AugmentConfig
    train: bool

    def __call__(self, sample: dict[str, Any], rng_seed: int | None = None) -> dict[str, Any]:
        """Transform one sample; the same ``rng_seed`` gives the same output, ``None`` draws fresh entropy.

        Pass a seed from a seeded generator for a reproducible run (the loader does, per slot).
        """
        hw, warp, photo_seq = _draw_warp(self.cfg, self.train, sample, rng_seed)
        photometric = _photometric(self.cfg) if self.train else None
        if photometric is None and warp.size == hw and np.array_equal(warp.matrix, np.eye(3)):
            # Nothing to do (evaluation without `resize`): copies of the maps, without resampling.
            return {k: dict(v) if k == "meta" else v.copy() for k, v in sample.items()}
        out = apply_warp(sample, warp, self.cfg.rgb_pad)
        if photometric is not None and "rgb" in out:
            # One shared generator for all photometric ops keeps their draws independent
            # (Compose(seed=...) would seed every op with the same stream).
            seed = int(photo_seq.generate_state(1)[0])
            photometric.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out["rgb"] = photometric(image=out["rgb"])["image"]
        return out


def build_transform(
    cfg: AugmentConfig | dict[str, Any], train: bool, on: Literal["cpu", "device"] = "cpu"
) -> SampleTransform | WarpSampler:
    """A transform for training (random geometry + photometric) or evaluation (``resize`` only).

    ``on="device"``: a :class:`WarpSampler`, which only draws the warp for the device to apply.
    """
    config = cfg if isinstance(cfg, AugmentConfig) else AugmentConfig.model_validate(cfg)
    if on == "device":
        photometric = [k for k in ("color_jitter", "gaussian_noise", "blur") if getattr(config, k) is not None]
        if photometric:
            raise ValueError(f"augmentation on the device has no photometric ops; the config sets {photometric}")
        return WarpSampler(config, bool(train))
    # Build once so albumentations' own argument checks fail here, not on the first sample.
    _photometric(config)
    return SampleTransform(config, bool(train))


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------
def to_tensors(
    sample: dict[str, Any],
    tasks: list[str] | tuple[str, ...],
    modalities: list[str] | tuple[str, ...],
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Model inputs (``rgb`` 3×H×W normalised, ``depth`` 1×H×W metres) and targets per task.

    Targets follow the member's kind (datasets/codec.py ``Member``): semseg/parts Long H×W (255 =
    ignore), depth 1×H×W metres (0 = missing), normals 3×H×W, edge 1×H×W float {0,1}, sal 1×H×W float
    in [0,1] (stored 255 = salient); a registered member the same way as the built-in one of its kind.
    """
    sid = _sample_id(sample)
    for names, known, what in ((tasks, target_members(), "task"), (modalities, MODALITIES, "modality")):
        for name in names:
            if name not in known:
                raise SampleError(f"sample {sid}: unknown {what} {name!r}; known: {', '.join(known)}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise SampleError(f"mean and std must be 3 values with std > 0, got mean={mean}, std={std}")
    check_sample(sample)

    def get(member: str, role: str) -> np.ndarray:
        if member not in sample:
            have = ", ".join(k for k in sample if k != "meta") or "nothing"
            raise SampleError(f"sample {sid}: member {member!r} is needed as a {role} but missing (has: {have})")
        return np.ascontiguousarray(sample[member])

    inputs: dict[str, torch.Tensor] = {}
    for mod in modalities:
        arr = get(mod, "modality")
        if mod == "rgb":
            x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
            m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
            s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
            inputs[mod] = (x - m) / s
        else:
            inputs[mod] = torch.from_numpy(arr.copy()).unsqueeze(0)
    targets: dict[str, torch.Tensor] = {}
    for task in tasks:
        arr = get(task, "task")
        kind = MEMBERS[task].kind
        if kind == "labels":
            targets[task] = torch.from_numpy(arr).long()
        elif kind == "scalar16":
            targets[task] = torch.from_numpy(arr.copy()).unsqueeze(0)
        elif kind == "normals":
            targets[task] = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        elif kind == "binary":
            targets[task] = torch.from_numpy((arr > 0).astype(np.float32)).unsqueeze(0)
        elif kind == "rgb":
            targets[task] = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0).contiguous()
        else:  # gray
            targets[task] = torch.from_numpy(arr.astype(np.float32) / 255.0).unsqueeze(0)
    return inputs, targets
