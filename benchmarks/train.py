"""Training overheads: Ray Train vs a plain loop, MLflow logging cost, 1 vs 2 workers.

``python benchmarks/train.py [--quick] [--json] [--only cpu|cuda]``. Everything is measured in one run on the same
model, shards and batch size. Throughput is taken from epochs after the first (the first pays for
worker start-up, imports and allocator warm-up), as ``train/samples_per_s`` from the very same
``pipelines.train.steps.train_epoch`` in both set-ups, so the ratio isolates what Ray Train adds. The plain
loop and Ray Train alternate in rounds, in reverse order every other round (plain, Ray, Ray, plain),
so that a drift in the shared host's load cancels out of the ratio.

With CUDA present it also profiles the train step on one GPU (``gpu_step_profile``: images/s, the step
split into data wait / forward / backward / optimizer, peak memory and MFU against :data:`BF16_PEAK_FLOPS`,
eager, channels_last, augmentation on the device and ``torch.compile``), and measures GPU throughput on the paper set-up
(``configs/nyud/mtinet_hrnet18.yaml``: MTI-Net, HRNet-18 at width 1, 480×640, bf16 autocast) on
synthetic shards at 480×640: images/s of Ray Train with one GPU worker, and with two when the machine
has two GPUs (ratio ``two_workers_vs_one:cuda``). Without CUDA, ``--only cuda`` reports the GPU parts as
skipped, with the reason, and exits 0.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from benchmarks._common import emit, parse_args  # noqa: E402


def _config(shards: Path, tmp: Path, workers: int, threads: int, epochs: int, size: str):
    from pipelines.config import load_config

    return load_config(
        None,
        [
            f"data.shards={shards}",
            "data.tasks=[semseg, depth, normals, edge]",
            "data.loader_workers=0",
            "data.augment={hflip: 0.5}",
            "model.name=mtinet",
            f"model.width={size}",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            f"train.workers={workers}",
            f"train.cpus_per_worker={threads}",
            f"train.torch_threads={threads}",
            "train.preview_every=0",
            "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            "tracking.experiment=bench",
            f"checkpoint.storage_path={tmp}/ray",
        ],
    )


def _gpu_config(shards: Path, tmp: Path, workers: int, cpus_per_worker: int, epochs: int):
    """The NYUD MTI-Net HRNet-18 paper config on ``shards``: batch 8 per GPU, no ImageNet weights."""
    from pipelines.config import load_config

    return load_config(
        Path(__file__).resolve().parents[1] / "configs" / "nyud" / "mtinet_hrnet18.yaml",
        [
            f"data.shards={shards}",
            f"data.loader_workers={max(1, min(8, cpus_per_worker - 1))}",
            "data.shuffle_buffer=64",
            "model.pretrained=null",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            f"train.workers={workers}",
            f"train.cpus_per_worker={cpus_per_worker}",
            "train.preview_every=0",
            "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            "tracking.experiment=bench-gpu",
            f"checkpoint.storage_path={tmp}/ray",
            "failure.max_failures=0",
        ],
    )


def gpu_throughput(tmp: Path, quick: bool) -> tuple[list[dict], dict[str, float]]:
    """Images/s of Ray Train on CUDA, 1 worker (and 2 on a machine with two GPUs); nothing without CUDA."""
    import ray
    import torch

    from datasets.sources.synthetic import SyntheticSource
    from datasets.writer import write_dataset
    from pipelines.train.driver import start_local_ray

    if not torch.cuda.is_available():
        return [], {}
    n, epochs = (64, 2) if quick else (512, 3)
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    shards = tmp / "shards-480x640"
    write_dataset(
        SyntheticSource(num_train=n, num_val=16, height=480, width=640),
        shards,
        shard_size=32,
        workers=min(8, cpus),
        progress=False,
    )
    results, steady = [], {}
    for workers in (1, 2) if gpus >= 2 else (1,):
        cfg = _gpu_config(shards, tmp, workers, max(1, cpus // workers), epochs)
        setup = f"Ray Train, {workers} GPU worker{'s' if workers > 1 else ''}, MTI-Net HRNet-18 480×640, bf16 autocast"
        start_local_ray(num_cpus=cpus, log_to_driver=False)
        try:
            rates = ray_loop(cfg, f"bench-gpu-{workers}w")
        except Exception as e:  # keep the CPU figures measured before; the error goes into the JSON
            results.append({"setup": setup, "error": f"{type(e).__name__}: {e}"})
            break
        finally:
            ray.shutdown()
        steady[workers] = statistics.mean(rates[1:])
        results.append(
            {
                "setup": setup,
                "device": torch.cuda.get_device_name(0),
                "batch_size_per_worker": cfg.train.batch_size,
                "samples_per_s_by_epoch": rates,
                "steady_images_per_s": steady[workers],
            }
        )
    return results, ({"two_workers_vs_one:cuda": steady[2] / steady[1]} if 2 in steady else {})


#: Dense bf16 tensor-core peak (FLOP/s) by GPU name: the vendor's datasheet figures without sparsity.
BF16_PEAK_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # a name without the form factor: the SXM figure
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def bf16_peak(name: str) -> float | None:
    """The table's figure for the first key found in the GPU's name (longest keys first), else None."""
    for key in sorted(BF16_PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return BF16_PEAK_FLOPS[key]
    return None


STEP_VARIANTS = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "augment_on_device": {"augment_on": "device"},
    "compile_default": {"compile": "default"},
}


def gpu_step_profile(tmp: Path, quick: bool) -> tuple[list[dict], dict[str, float]]:
    """One process on one GPU, the NYUD MTI-Net HRNet-18 set-up (480×640, batch 8, bf16 autocast), for each
    of :data:`STEP_VARIANTS`: images/s, the step split into data wait / forward+loss / backward / optimizer
    (CUDA events, read once at the end), peak GPU memory and MFU (the model's FLOPs per image, counted by
    ``torch.utils.flop_counter`` over forward and backward, times images/s, over the card's bf16 peak)."""
    import torch

    if not torch.cuda.is_available():
        reason = "no CUDA on this machine: the GPU step profile is not measured"
        return [{"setup": "GPU step profile", "skipped": reason}], {}
    from torch.utils.flop_counter import FlopCounterMode

    from datasets.loader import ShardStream, make_loader
    from datasets.manifest import load_manifest
    from datasets.sources.synthetic import SyntheticSource
    from datasets.transforms import build_transform
    from datasets.writer import write_dataset
    from fusion import build_model
    from fusion.losses import MultiTaskLoss
    from pipelines.config import model_config
    from pipelines.train.steps import (
        channels_last_inputs,
        device_augment,
        make_forward_loss,
        make_optimizer,
        to_device,
    )

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = bf16_peak(name)
    n, steps, warm = (48, 12, 4) if quick else (160, 40, 8)
    shards = tmp / "shards-step-480x640"
    if not shards.exists():
        write_dataset(
            SyntheticSource(num_train=n, num_val=8, height=480, width=640),
            shards,
            shard_size=16,
            workers=min(8, os.cpu_count() or 1),
            progress=False,
        )
    results, ratios = [], {}
    for variant, opts in STEP_VARIANTS.items():
        cfg = _gpu_config(shards, tmp, 1, os.cpu_count() or 1, 1)
        mcfg = model_config(cfg, len(load_manifest(shards)["classes"]))
        torch.manual_seed(0)
        model = build_model(mcfg).to(device)
        if opts.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        crit = MultiTaskLoss(mcfg["tasks"], cfg.loss.weights)
        opt = make_optimizer(cfg, model)
        on = opts.get("augment_on", "cpu")
        stream = ShardStream(
            shards,
            "train",
            tasks=cfg.data.tasks,
            modalities=cfg.data.modalities,
            batch_size=cfg.train.batch_size,
            train=True,
            num_workers=cfg.data.loader_workers,
            shuffle_buffer=16,
            transform=build_transform(cfg.data.augment, train=True, on=on),
        )
        fwd = make_forward_loss(model, crit, device, amp=True, compile_mode=opts.get("compile", False))
        transform = device_augment(cfg.data.augment.rgb_pad) if on == "device" else None
        torch.cuda.reset_peak_memory_stats()
        marks: list[tuple[float, list]] = []
        flops_per_image = None
        done, epoch = 0, 0
        wall0 = None
        while done < steps + warm:
            stream.set_epoch(epoch)
            epoch += 1
            it = iter(make_loader(stream, pin_memory=True))
            while done < steps + warm:
                t0 = time.perf_counter()
                batch = next(it, None)
                wait = time.perf_counter() - t0
                if batch is None:
                    break
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
                ev[0].record()
                inputs, targets = to_device(batch, device)
                if transform is not None:
                    inputs, targets = transform(batch, inputs, targets)
                if opts.get("channels_last"):
                    inputs = channels_last_inputs(inputs)
                if done == warm and flops_per_image is None and not opts.get("compile"):
                    with FlopCounterMode(display=False) as fc:
                        total, _ = fwd(inputs, targets)
                        total.backward()
                    flops_per_image = fc.get_total_flops() / cfg.train.batch_size
                    opt.zero_grad(set_to_none=True)
                    continue
                total, _ = fwd(inputs, targets)
                ev[1].record()
                total.backward()
                ev[2].record()
                opt.step()
                opt.zero_grad(set_to_none=True)
                ev[3].record()
                if done == warm:
                    torch.cuda.synchronize()
                    wall0 = time.perf_counter()
                if done >= warm:
                    marks.append((wait, ev))
                done += 1
        torch.cuda.synchronize()
        wall = time.perf_counter() - wall0
        images = len(marks) * cfg.train.batch_size
        split = {
            "data_wait_ms": 1000 * statistics.mean(w for w, _ in marks),
            "forward_loss_ms": statistics.mean(e[0].elapsed_time(e[1]) for _, e in marks),
            "backward_ms": statistics.mean(e[1].elapsed_time(e[2]) for _, e in marks),
            "optimizer_ms": statistics.mean(e[2].elapsed_time(e[3]) for _, e in marks),
        }
        row = {
            "setup": f"GPU step profile: {variant}",
            "device": name,
            "batch_size": cfg.train.batch_size,
            "steps": len(marks),
            "images_per_s": images / wall,
            "step_ms": 1000 * wall / len(marks),
            **split,
            "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "bf16_peak_flops": peak,
        }
        if flops_per_image is not None:
            row["model_flops_per_image"] = flops_per_image
            if peak:
                row["mfu"] = flops_per_image * row["images_per_s"] / peak
                ratios[f"mfu:{variant}:cuda"] = row["mfu"]
        ratios[f"images_per_s:{variant}:cuda"] = row["images_per_s"]
        results.append(row)
        del model, opt, fwd
        torch.cuda.empty_cache()
    flops = next((r["model_flops_per_image"] for r in results if "model_flops_per_image" in r), None)
    for r in results:  # compiled runs count no FLOPs themselves: the model is the same
        if "mfu" not in r and flops is not None and peak:
            r["model_flops_per_image"] = flops
            r["mfu"] = flops * r["images_per_s"] / peak
            ratios[f"mfu:{r['setup'].split(': ')[1]}:cuda"] = r["mfu"]
    return results, ratios


def plain_loop(cfg) -> list[float]:
    """The same epoch function in one process, no Ray, no DDP: samples/s per epoch."""
    import torch

    from datasets.loader import ShardStream, make_loader
    from datasets.manifest import load_manifest
    from datasets.transforms import build_transform
    from fusion import build_model
    from fusion.losses import MultiTaskLoss
    from pipelines.config import model_config
    from pipelines.train.steps import make_optimizer, train_epoch

    torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(0)
    mcfg = model_config(cfg, len(load_manifest(cfg.data.shards)["classes"]))
    model = build_model(mcfg)
    stream = ShardStream(
        cfg.data.shards,
        "train",
        tasks=cfg.data.tasks,
        modalities=cfg.data.modalities,
        batch_size=cfg.train.batch_size,
        train=True,
        shuffle_buffer=cfg.data.shuffle_buffer,
        transform=build_transform(cfg.data.augment, train=True),
    )
    crit, opt = MultiTaskLoss(mcfg["tasks"]), make_optimizer(cfg, model)
    rates = []
    for epoch in range(cfg.train.epochs):
        stream.set_epoch(epoch)
        rates.append(
            train_epoch(model, make_loader(stream), crit, opt, None, torch.device("cpu"), epoch=epoch)[
                "train/samples_per_s"
            ]
        )
    return rates


def ray_loop(cfg, run_name: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    from pipelines.train.driver import run_training

    s = run_training(cfg, run_name)
    hist = MlflowClient(tracking_uri=s["tracking_uri"]).get_metric_history(s["mlflow_run_id"], "train/samples_per_s")
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def mlflow_log_seconds(tmp: Path, num_metrics: int, repeats: int, hw: tuple[int, int]) -> tuple[float, float]:
    """Median seconds of one epoch's batched log_metrics call, and of logging one prediction-preview
    PNG (4 samples × 4 tasks at ``hw``, as training makes every ``train.preview_every`` epochs), to a
    sqlite store with a local artifact folder."""
    import torch

    from pipelines.track.tracker import Tracker
    from pipelines.train.previews import preview_grid

    tracker = Tracker.create_run(f"sqlite:///{tmp}/mlflow-bench.db", "bench-logging", "log", {})
    metrics = {f"val/m{i}": float(i) for i in range(num_metrics)}
    log_times = []
    for step in range(repeats):
        t0 = time.perf_counter()
        tracker.log_metrics(metrics, step=step)
        log_times.append(time.perf_counter() - t0)
    g = torch.Generator().manual_seed(0)
    h, w = hw
    tasks = ["semseg", "depth", "normals", "edge"]
    inputs = {"rgb": torch.rand(4, 3, h, w, generator=g)}
    targets = {
        "semseg": torch.randint(0, 13, (4, h, w), generator=g),
        "depth": torch.rand(4, 1, h, w, generator=g) * 5,
        "normals": torch.nn.functional.normalize(torch.randn(4, 3, h, w, generator=g), dim=1),
        "edge": (torch.rand(4, 1, h, w, generator=g) > 0.9).float(),
    }
    outputs = {
        "semseg": torch.randn(4, 13, h, w, generator=g),
        "depth": torch.rand(4, 1, h, w, generator=g) * 5,
        "normals": torch.randn(4, 3, h, w, generator=g),
        "edge": torch.randn(4, 1, h, w, generator=g),
    }
    preview_times = []
    for i in range(max(2, repeats // 4)):
        png = preview_grid(inputs, targets, outputs, tasks, tmp / f"epoch_{i:04d}.png")
        t0 = time.perf_counter()
        tracker.log_artifact(png, "previews")
        preview_times.append(time.perf_counter() - t0)
    return statistics.median(log_times), statistics.median(preview_times)


def cpu_overheads(tmp: Path, quick: bool) -> tuple[list[dict], dict[str, float]]:
    """Ray Train vs the plain loop (1 worker), 1 vs 2 workers, and the MLflow logging fraction, on CPU."""
    import ray

    from datasets.sources.synthetic import SyntheticSource
    from datasets.writer import write_dataset
    from pipelines.train.driver import start_local_ray

    n, hw, epochs, size, rounds = (48, (64, 80), 3, "0.125", 1) if quick else (192, (120, 160), 3, "0.25", 2)
    results, ratios = [], {}
    shards = tmp / "shards"
    write_dataset(
        SyntheticSource(num_train=n, num_val=16, height=hw[0], width=hw[1]), shards, shard_size=16, progress=False
    )
    threads = os.cpu_count() or 1
    cfg1 = _config(shards, tmp, 1, threads, epochs, size)
    # The host's load drifts over minutes, so the two set-ups alternate in rounds, the order reversed
    # in every other round (plain, Ray, Ray, plain: a linear drift cancels out of the means). The
    # plain loop runs with no Ray on the machine; each Ray pass starts its own local Ray as
    # `fusionpipe train` does (dashboard, local-Ray environment).
    passes: dict[str, list[list[float]]] = {"plain": [], "ray": []}
    for r in range(rounds):
        for setup in ("plain", "ray") if r % 2 == 0 else ("ray", "plain"):
            if setup == "plain":
                passes["plain"].append(plain_loop(cfg1))
            else:
                start_local_ray(num_cpus=threads, log_to_driver=False)
                passes["ray"].append(ray_loop(cfg1, f"bench-1w-{r}"))
                ray.shutdown()
    steady = {k: [statistics.mean(p[1:]) for p in v] for k, v in passes.items()}
    steady_plain, steady_ray = statistics.mean(steady["plain"]), statistics.mean(steady["ray"])
    results += [
        {
            "setup": "plain loop, 1 process",
            "threads": threads,
            "samples_per_s_by_pass_and_epoch": passes["plain"],
            "steady_samples_per_s": steady_plain,
        },
        {
            "setup": "Ray Train, 1 worker",
            "threads": threads,
            "samples_per_s_by_pass_and_epoch": passes["ray"],
            "steady_samples_per_s": steady_ray,
        },
    ]
    ratios["ray_train_vs_plain_loop"] = steady_ray / steady_plain
    if not quick:
        cfg2 = _config(shards, tmp, 2, max(1, threads // 2), epochs, size)
        start_local_ray(num_cpus=threads, log_to_driver=False)
        ray2 = ray_loop(cfg2, "bench-2w")
        ray.shutdown()
        results.append(
            {
                "setup": "Ray Train, 2 workers (DDP)",
                "threads_per_worker": max(1, threads // 2),
                "samples_per_s_by_epoch": ray2,
                "steady_samples_per_s": statistics.mean(ray2[1:]),
            }
        )
        ratios["two_workers_vs_one"] = statistics.mean(ray2[1:]) / steady_ray
    epoch_s = n / steady_ray
    log_s, preview_s = mlflow_log_seconds(tmp, num_metrics=40, repeats=5 if quick else 20, hw=hw)
    from pipelines.config import TrainSection

    preview_every = TrainSection().preview_every  # the default; the timed passes ran without previews
    results.append(
        {
            "setup": "MLflow log_artifact, one prediction-preview PNG",
            "seconds": preview_s,
            "every_epochs": preview_every,
        }
    )
    results.append(
        {"setup": "MLflow log_metrics, 40 metrics, one batched request", "seconds": log_s, "epoch_seconds": epoch_s}
    )
    # Per epoch: the metrics every epoch, a preview every `preview_every` epochs.
    ratios["mlflow_logging_fraction"] = (log_s + preview_s / preview_every) / epoch_s
    return results, ratios


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], devices=True, argv=argv, cuda_optional=True)
    results, ratios = [], {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only != "cuda":
            results, ratios = cpu_overheads(tmp, args.quick)
        if args.only != "cpu":
            step_results, step_ratios = gpu_step_profile(tmp, args.quick)
            results += step_results
            ratios.update(step_ratios)
            gpu_results, gpu_ratios = gpu_throughput(tmp, args.quick)
            results += gpu_results
            ratios.update(gpu_ratios)
    emit("train", results, ratios, args.json)
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
