"""`fusionpipe evaluate --device`: which device a name means, and clear errors for the rest."""

import pytest
import torch

from pipelines.analysis.evaluate import resolve_device
from pipelines.config import ConfigError


def test_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_devices_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="--device: 'gpu0' is not a device"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="--device: 'meta' is not supported"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda:2: this machine has 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_reference_metrics_are_taken_at_the_best_epoch(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from pipelines.analysis.evaluate import run_metrics

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("refs")
    runs = []
    for tag in ("1", None):
        run = client.create_run(exp, tags={"fusionpipe.best_epoch": tag} if tag else {})
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("val/semseg/miou", v, 0, step) for step, v in enumerate([0.1, 0.5, 0.3])]
            + [Metric("train/loss/total", 1.0, 0, 0)],
        )
        runs.append(run.info.run_id)
    assert run_metrics(runs[0], uri) == {"semseg/miou": 0.5}  # the best epoch, as the evaluated checkpoint
    assert run_metrics(runs[1], uri) == {"semseg/miou": 0.3}  # no tag: the latest value
    with pytest.raises(ConfigError, match="reference run 'nope' not found"):
        run_metrics("nope", uri)


def test_references_are_checked_before_the_evaluation(tmp_path, smoke_shards):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from pipelines.analysis.evaluate import reference_metrics
    from pipelines.config import load_config
    from tests import REPO_ROOT

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        REPO_ROOT / "configs" / "smoke.yaml",
        [f"data.shards={smoke_shards}", f"tracking.uri={uri}", "data.tasks=[semseg, depth]"],
    )
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("refs")

    def run(**metrics):
        r = client.create_run(exp)
        client.log_batch(r.info.run_id, metrics=[Metric(f"val/{k}", v, 0, 0) for k, v in metrics.items()])
        return r.info.run_id

    semseg, depth = run(**{"semseg/miou": 0.4}), run(**{"depth/rmse": 1.2})
    assert reference_metrics([semseg, depth], cfg.resolved_paths(), 13) == {"semseg/miou": 0.4, "depth/rmse": 1.2}
    other = run(**{"semseg/miou": 0.5})
    with pytest.raises(ConfigError, match=rf"reference runs '{semseg}' and '{other}' both report 'val/semseg/miou'"):
        reference_metrics([semseg, other], cfg.resolved_paths(), 13)
    edge = run(**{"edge/odsF": 0.3})
    with pytest.raises(ConfigError, match=r"share no delta_m metric .* with this model's tasks \['depth', 'semseg'\]"):
        reference_metrics([edge], cfg.resolved_paths(), 13)
    zero = run(**{"semseg/miou": 0.0})
    with pytest.raises(ConfigError, match=rf"reference run '{zero}': val/semseg/miou is 0.0"):
        reference_metrics([zero], cfg.resolved_paths(), 13)


def test_a_bad_summary_file_is_named(tmp_path):
    import json

    from click.testing import CliRunner

    from pipelines.cli.run import evaluate
    from tests import REPO_ROOT

    for text, why in (
        ("not json", "not a train summary"),
        ('{"best_checkpoint": null}', "no 'best_checkpoint'"),
        ("[1, 2]", "not a train summary"),
    ):
        (tmp_path / "s.json").write_text(text)
        out = CliRunner().invoke(
            evaluate,
            ["--config", str(REPO_ROOT / "configs" / "smoke.yaml"), "--summary", str(tmp_path / "s.json"), "--json"],
        )
        assert out.exit_code == 2 and f"--summary {tmp_path / 's.json'}: {why}" in json.loads(out.stdout)["error"]


@pytest.mark.parametrize("how", [["--run-id", "abc"], ["--checkpoint", "x", "--baseline-run", "abc"]])
def test_a_dead_store_is_not_a_missing_run(monkeypatch, smoke_shards, how):
    from click.testing import CliRunner

    from pipelines.cli.run import evaluate
    from tests import REPO_ROOT

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = CliRunner().invoke(
        evaluate,
        [
            "--config",
            str(REPO_ROOT / "configs" / "smoke.yaml"),
            "--set",
            f"data.shards={smoke_shards}",
            "--set",
            "tracking.uri=http://alice:s3cr3t@127.0.0.1:9",
            *how,
            "--json",
        ],
    )
    assert out.exit_code == 3, out.output
    assert "not found" not in out.output and "s3cr3t" not in out.output


def test_evaluate_and_its_baselines_read_at_the_configs_resize(tmp_path, smoke_shards, monkeypatch):
    import json

    import datasets.loader
    from fusion import build_model
    from pipelines.analysis import evaluate as evaluate_module
    from pipelines.analysis.evaluate import run_evaluate
    from pipelines.checkpoints import save_checkpoint
    from pipelines.config import load_config, model_config
    from tests import REPO_ROOT

    cfg = load_config(
        REPO_ROOT / "configs" / "smoke.yaml",
        [f"data.shards={smoke_shards}", f"tracking.uri=sqlite:///{tmp_path}/m.db", "data.augment.resize=[32, 40]"],
    )
    classes = json.loads((smoke_shards / "manifest.json").read_text())["classes"]
    mcfg = model_config(cfg.resolved_paths(), len(classes))
    save_checkpoint(tmp_path / "ck", build_model(mcfg), {"epoch": 0, "model_config": mcfg, "classes": classes})
    sizes = []
    real = datasets.loader.ShardStream

    class Recording(real):
        def _to_tensors(self, sample):
            sizes.append(sample["rgb"].shape[:2])
            return super()._to_tensors(sample)

    monkeypatch.setattr(datasets.loader, "ShardStream", Recording)
    monkeypatch.setattr(evaluate_module, "ShardStream", Recording)
    result = run_evaluate(cfg, checkpoint=str(tmp_path / "ck"), baselines=True)
    assert result["num_samples"] == 8 and "majority_class_miou" in result["trivial_baselines"]
    # 8 val samples evaluated, then 16 train + 8 val samples for the trivial baselines: all at 32×40.
    assert len(sizes) == 32 and set(sizes) == {(32, 40)}


def test_the_default_split_is_the_configs_val_split(tmp_path, smoke_shards):
    import json

    from fusion import build_model
    from pipelines.analysis.evaluate import run_evaluate
    from pipelines.checkpoints import save_checkpoint
    from pipelines.config import load_config, model_config
    from tests import REPO_ROOT

    def cfg(*overrides):
        return load_config(
            REPO_ROOT / "configs" / "smoke.yaml",
            [f"data.shards={smoke_shards}", f"tracking.uri=sqlite:///{tmp_path}/m.db", *overrides],
        )

    classes = json.loads((smoke_shards / "manifest.json").read_text())["classes"]
    mcfg = model_config(cfg().resolved_paths(), len(classes))
    save_checkpoint(tmp_path / "ck", build_model(mcfg), {"epoch": 0, "model_config": mcfg, "classes": classes})
    ck = str(tmp_path / "ck")
    default = run_evaluate(cfg(), checkpoint=ck)
    assert (default["split"], default["num_samples"]) == ("val", 8)
    # A config that validates on another split is scored there, as training validated it.
    on_train = run_evaluate(cfg("data.val_split=train"), checkpoint=ck)
    assert (on_train["split"], on_train["num_samples"]) == ("train", 16)
    assert run_evaluate(cfg("data.val_split=train"), checkpoint=ck, split="val")["num_samples"] == 8
