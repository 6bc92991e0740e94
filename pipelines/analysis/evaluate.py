"""``fusionpipe evaluate``: exact metrics of a checkpoint on a split, optionally delta_m.

The checkpoint is a directory (``model.pt`` + ``meta.json``) or the best checkpoint logged to an
MLflow run. The config gives the data; its model section must match the checkpoint's, field by field.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from datasets.loader import ShardStream, make_loader
from datasets.manifest import write_atomic
from datasets.transforms import build_transform
from fusion.inference import OFFICIAL_STRIDE_RATIO, TestTimeAugmented
from fusion.metrics import DELTA_M_DIRECTIONS, MetricSet, PerClassMetric, delta_m
from pipelines.analysis.compare import require_store, union_of_references
from pipelines.analysis.eval_report import log_to_run, pictures
from pipelines.checkpoints import (
    CheckpointError,
    build_checkpoint_model,
    check_compatible,
    load_model_state,
    read_meta,
)
from pipelines.config import ConfigError, ExperimentConfig, model_config
from pipelines.jsonio import dumps
from pipelines.progress import Progress, progress_every_s
from pipelines.storage import copy_to_local, is_uri
from pipelines.track.data_versions import resolve_data_rev
from pipelines.track.redact import redact_url_password, restore_secrets
from pipelines.track.registry import is_model_uri, resolve_model_uri
from pipelines.track.tracker import run_not_found
from pipelines.train.driver import validate_experiment
from pipelines.train.steps import evaluate


def _download_checkpoint(run_id: str, uri: str, dest: str) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    require_store(uri, error=ConfigError)  # a read: no store is created for --run-id
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as e:
        if not run_not_found(e):
            raise  # the store failed: exit 3, not "not found"
        raise ConfigError(f"MLflow run {run_id!r} not found in {redact_url_password(uri)}") from e
    try:
        return Path(client.download_artifacts(run_id, "checkpoints/best", dest))
    except (MlflowException, OSError) as e:
        if isinstance(e, MlflowException) and not run_not_found(e):
            raise
        raise ConfigError(f"MLflow run {run_id!r} has no checkpoints/best artifact (did it finish?): {e}") from e


def _load_checkpoint(ckpt: Path, want: dict[str, Any], source: str | None) -> tuple[dict[str, Any], torch.nn.Module]:
    """The checkpoint's meta and model, checked against the config's model ``want``. The errors about a
    copy downloaded from ``source`` (an MLflow run's artifact, an object store) name ``source`` first: the
    copy's directory is a temporary one."""
    try:
        meta = read_meta(ckpt, require=("model_config",))
        check_compatible(meta["model_config"], want, str(ckpt))
        model = build_checkpoint_model(meta["model_config"])  # model.pt has every weight: no ImageNet file read
        load_model_state(model, ckpt)
    except CheckpointError as e:
        if source is None:
            raise
        raise type(e)(f"{source} (downloaded to {ckpt}): {e}") from None
    return meta, model


def reference_metrics(run_ids: list[str], cfg: ExperimentConfig, num_classes: int) -> dict[str, float]:
    """The single-task reference runs' metrics for delta_m, one run per metric, checked against what
    the evaluated model will report."""
    reference, owner = union_of_references(
        ((rid, run_metrics(rid, cfg.tracking.uri)) for rid in run_ids), error=ConfigError
    )
    aux = set(cfg.model.options.get("auxiliary_tasks") or [])
    reported = set(MetricSet([t for t in cfg.data.tasks if t not in aux], max(1, num_classes)).compute())
    used = [k for k in DELTA_M_DIRECTIONS if k in reported and k in reference]
    if not used:
        raise ConfigError(
            f"reference runs {run_ids} share no delta_m metric ({', '.join(sorted(DELTA_M_DIRECTIONS))}) "
            f"with this model's tasks {sorted(t for t in cfg.data.tasks if t not in aux)}; they report "
            f"{sorted(reference) or 'no val metric'}"
        )
    for k in used:
        if reference[k] == 0 or not math.isfinite(reference[k]):
            raise ConfigError(
                f"reference run {owner[k]!r}: val/{k} is {reference[k]}, so the relative change "
                "delta_m needs is undefined"
            )
    return reference


def run_metrics(run_id: str, uri: str) -> dict[str, float]:
    """``val/*`` metrics of an MLflow run, without the ``val/`` prefix, at its best epoch.

    The best epoch is the run's ``fusionpipe.best_epoch`` tag, the epoch of the checkpoint that
    ``evaluate`` scores, so a reference is compared like for like. A run without the tag (not
    finished by fusionpipe) gives its latest values.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    require_store(uri, error=ConfigError)  # a read: no store is created for --baseline-run
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if not run_not_found(e):
            raise
        raise ConfigError(f"reference run {run_id!r} not found in {redact_url_password(uri)}") from e
    keys = [k for k in run.data.metrics if k.startswith("val/")]
    best = run.data.tags.get("fusionpipe.best_epoch")
    if best is None or not best.lstrip("-").isdigit():
        return {k[len("val/") :]: run.data.metrics[k] for k in keys}
    out = {}
    for k in keys:
        at_best = [m.value for m in client.get_metric_history(run_id, k) if m.step == int(best)]
        out[k[len("val/") :]] = at_best[-1] if at_best else run.data.metrics[k]
    return out


@torch.no_grad()
def trivial_baselines(cfg: ExperimentConfig, num_classes: int, split: str) -> dict[str, float]:
    """What a model that learned nothing scores: the training set's majority class everywhere, and
    its mean valid depth everywhere. ``learned`` ratios in the main job are measured against these."""
    tasks = [t for t in ("semseg", "depth") if t in cfg.data.tasks]
    if not tasks:
        return {}

    def stream(s: str) -> ShardStream:
        return ShardStream(
            cfg.data.shards,
            s,
            tasks=tasks,
            modalities=cfg.data.modalities,
            batch_size=16,
            train=False,
            num_workers=0,
            transform=build_transform(cfg.data.augment, train=False),
        )

    hist = torch.zeros(num_classes, dtype=torch.float64)
    depth_sum, depth_n = 0.0, 0
    for batch in make_loader(stream(cfg.data.train_split)):
        t = batch["targets"]
        if "semseg" in t:
            ids = t["semseg"][t["semseg"] != 255]
            hist += torch.bincount(ids.flatten(), minlength=num_classes)[:num_classes].double()
        if "depth" in t:
            valid = t["depth"][t["depth"] > 0]
            depth_sum, depth_n = depth_sum + float(valid.double().sum()), depth_n + valid.numel()
    majority, mean_depth = int(hist.argmax()), depth_sum / max(1, depth_n)
    metrics = MetricSet(
        tasks,
        num_classes=num_classes,
        edge_max_dist=cfg.data.edge_max_dist,
        miou_classes=cfg.data.miou_classes,
        edge_protocol=cfg.data.edge_protocol,
    )
    for batch in make_loader(stream(split)):
        t = batch["targets"]
        out: dict[str, torch.Tensor] = {}
        if "semseg" in t:
            b, h, w = t["semseg"].shape
            logits = torch.zeros(b, num_classes, h, w)
            logits[:, majority] = 1.0
            out["semseg"] = logits
        if "depth" in t:
            out["depth"] = torch.full_like(t["depth"], mean_depth)
        metrics.update(out, t)
    m = metrics.compute()
    result = {}
    if "semseg" in tasks:
        result["majority_class_miou"] = m["semseg/miou"]
    if "depth" in tasks:
        result["mean_depth_rmse"] = m["depth/rmse"]
    return result


def resolve_device(name: str) -> torch.device:
    """``auto`` (the first GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return device


def run_evaluate(
    cfg: ExperimentConfig,
    checkpoint: str | None = None,
    run_id: str | None = None,
    split: str | None = None,
    baseline_runs: list[str] | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike[str] | None = None,
    baselines: bool = False,
    device: str = "auto",
    log_run: bool = False,
    scales: list[float] | None = None,
    flip: bool = False,
    window: tuple[int, int] | None = None,
    stride_ratio: float = OFFICIAL_STRIDE_RATIO,
) -> dict[str, Any]:
    """Exact metrics of a checkpoint on ``split`` and, with semseg among the tasks, per class (IoU with
    the manifest's class names, depth RMSE and normals angle per target class, the confusion matrix).
    ``out`` gets the JSON and, beside it, the pictures (``<stem>.confusion.png``, ``<stem>.per_class.png``);
    ``log_run`` writes all of it into the MLflow run that trained the checkpoint
    (:func:`pipelines.analysis.eval_report.log_to_run`). ``scales``, ``flip`` and ``window`` (with
    ``stride_ratio``) predict by :class:`fusion.inference.TestTimeAugmented`: multi-scale, flip and
    sliding-window inference as the official ANN code does it; without them, one plain forward."""
    if (checkpoint is None) == (run_id is None):
        raise ConfigError("give exactly one of --checkpoint and --run-id")
    dev = resolve_device(device)
    every_s = progress_every_s()

    cfg = resolve_data_rev(cfg)  # data.rev: the shards as they were at that git revision
    # The checkpoint holds every weight: the config's ImageNet file (model.pretrained) is neither read nor needed.
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": None})})
    manifest = validate_experiment(cfg)
    cfg = cfg.resolved_paths()
    registered = run_id if run_id is not None and is_model_uri(run_id) else None
    if registered:  # models:/NAME/VERSION or models:/NAME@ALIAS: the run the version was logged in
        run_id = resolve_model_uri(registered, cfg.tracking.uri).run_id
    split = split or cfg.data.val_split  # the split training validated on
    if split not in manifest["splits"]:
        raise ConfigError(f"{cfg.data.shards}: no split {split!r}; splits: {sorted(manifest['splits'])}")
    # Before the evaluation: a reference that cannot give delta_m fails now, not after it.
    reference = reference_metrics(list(baseline_runs), cfg, len(manifest["classes"])) if baseline_runs else None
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            ckpt = _download_checkpoint(run_id, cfg.tracking.uri, tmp)  # type: ignore[arg-type]
        elif is_uri(checkpoint):  # a checkpoint on an object store (checkpoint.storage_path s3://...)
            # A URI from a summary or a tag has its credentials hidden (s3://KEY:***@BUCKET/...): those of
            # the config's storage path are put back when it names the same store.
            try:
                ckpt = copy_to_local(restore_secrets(checkpoint, cfg.checkpoint.storage_path), Path(tmp) / "checkpoint")
            except CheckpointError as e:  # it names the URI: not with the credentials put back
                raise CheckpointError(redact_url_password(str(e))) from None
        else:
            ckpt = Path(checkpoint)
        want = model_config(cfg, len(manifest["classes"]))
        downloaded = checkpoint is None or is_uri(checkpoint)
        source = (
            (redact_url_password(checkpoint) if checkpoint else f"runs:/{run_id}/checkpoints/best")
            if downloaded
            else None
        )
        meta, model = _load_checkpoint(ckpt, want, source)
    tta = None
    if scales is not None or flip or window is not None:
        try:
            tta = TestTimeAugmented(
                model, want["tasks"], scales=scales or [1.0], flip=flip, window=window, stride_ratio=stride_ratio
            )
        except ValueError as e:  # --scales, --window or --stride-ratio
            raise ConfigError(f"evaluate: {e}") from None
        model = tta
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    stream = ShardStream(
        cfg.data.shards,
        split,
        tasks=cfg.data.tasks,
        modalities=cfg.data.modalities,
        batch_size=batch_size or cfg.train.batch_size,
        train=False,
        num_workers=0,
        transform=build_transform(cfg.data.augment, train=False),
    )  # `resize`, as in validation
    per_class = PerClassMetric(len(manifest["classes"]), want["tasks"]) if "semseg" in want["tasks"] else None
    metrics = evaluate(
        model.to(dev),
        make_loader(stream, pin_memory=dev.type == "cuda"),
        want["tasks"],
        len(manifest["classes"]),
        dev,
        amp=cfg.train.amp,
        edge_max_dist=cfg.data.edge_max_dist,
        per_class=per_class,
        miou_classes=cfg.data.miou_classes,
        edge_protocol=cfg.data.edge_protocol,
        progress=Progress(
            f"evaluate {split}", -(-len(stream) // stream.batch_size), _say, every_s, unit="batch", final=True
        ),
    )
    flat = {k[len("val/") :]: v for k, v in metrics.items()}
    result: dict[str, Any] = {
        "checkpoint": redact_url_password(str(checkpoint)) if checkpoint else f"runs:/{run_id}/checkpoints/best",
        "epoch": meta.get("epoch"),
        "split": split,
        "num_samples": len(stream),
        "model": meta["model_config"]["name"],
        "device": str(dev),
        "metrics": flat,
    }
    if registered:
        result["model_uri"] = registered
    if tta is not None:
        result["inference"] = tta.settings()
    if per_class is not None:
        result.update(
            {("per_class" if k == "classes" else k): v for k, v in per_class.report(manifest["classes"]).items()}
        )
    if baselines:
        ref = trivial_baselines(cfg, len(manifest["classes"]), split)
        result["trivial_baselines"] = ref
        learned = {}
        if "majority_class_miou" in ref and ref["majority_class_miou"] > 0:
            learned["miou_vs_majority_class"] = flat["semseg/miou"] / ref["majority_class_miou"]
        if "mean_depth_rmse" in ref and ref["mean_depth_rmse"] > 0:
            learned["rmse_vs_mean_depth"] = flat["depth/rmse"] / ref["mean_depth_rmse"]
        result["learned"] = learned
    if reference is not None:
        try:
            result["delta_m"] = delta_m(flat, reference)
        except ValueError as e:
            raise ConfigError(f"--baseline-run {', '.join(baseline_runs or [])}: {e}") from e
        result["baseline_runs"] = list(baseline_runs or [])
    images = pictures(result) if out is not None or log_run else {}
    if out is not None:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            write_atomic(p.with_name(f"{p.stem}.{name}"), data)
        write_atomic(p, (dumps(result, indent=2, sort_keys=True) + "\n").encode())  # NaN -> null: strict JSON
    if log_run:
        logged_to = run_id or meta.get("mlflow_run_id")
        if not logged_to:
            raise ConfigError(
                f"--log-to-run: checkpoint {checkpoint} names no MLflow run (meta.json has no mlflow_run_id)"
            )
        result["logged_to_run"] = logged_to
        result["logged_metrics"] = log_to_run(cfg.tracking.uri, logged_to, result, images)
    return result


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
