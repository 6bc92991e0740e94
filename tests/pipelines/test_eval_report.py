"""evaluate's per-class breakdown, its pictures and --log-to-run, on a real checkpoint and a sqlite store."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from datasets.loader import ShardStream, make_loader
from datasets.transforms import build_transform
from fusion import build_model
from pipelines.analysis.eval_report import eval_metrics
from pipelines.analysis.evaluate import run_evaluate
from pipelines.checkpoints import save_checkpoint
from pipelines.config import ConfigError, load_config, model_config
from tests import REPO_ROOT


@pytest.fixture
def checkpoint(tmp_path, smoke_shards):
    """An untrained smoke model's checkpoint of a real MLflow run in a sqlite store: (config, dir, run id)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml", [f"data.shards={smoke_shards}", f"tracking.uri={uri}"])
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("eval"), run_name="trained")
    classes = json.loads((smoke_shards / "manifest.json").read_text())["classes"]
    mcfg = model_config(cfg.resolved_paths(), len(classes))
    torch.manual_seed(0)
    model = build_model(mcfg)
    meta = {"epoch": 3, "model_config": mcfg, "classes": classes, "mlflow_run_id": run.info.run_id}
    save_checkpoint(tmp_path / "ck", model, meta)
    return cfg, tmp_path / "ck", run.info.run_id, model, classes


def _confusion_by_hand(cfg, model, n):
    """The confusion matrix of the model's argmax on the val split, counted here pixel by pixel."""
    stream = ShardStream(
        cfg.data.shards, "val", tasks=cfg.data.tasks, modalities=cfg.data.modalities, batch_size=3,
        train=False, num_workers=0, transform=build_transform(cfg.data.augment, train=False),
    )  # fmt: skip
    cm = torch.zeros(n, n, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for batch in make_loader(stream):
            pred = model(batch["inputs"])["semseg"].argmax(1).flatten()
            target = batch["targets"]["semseg"].flatten()
            for t, p in zip(target.tolist(), pred.tolist(), strict=True):
                if t != 255:
                    cm[t, p] += 1
    return cm


def test_per_class_results_match_a_count_by_hand_and_the_overall_miou(checkpoint, tmp_path):
    cfg, ck, _, model, classes = checkpoint
    out = tmp_path / "eval" / "metrics.json"
    result = run_evaluate(cfg, checkpoint=str(ck), out=out)
    assert list(result["per_class"]) == classes and result["confusion"]["classes"] == classes
    cm = _confusion_by_hand(cfg.resolved_paths(), model, len(classes))
    assert result["confusion"]["counts"] == cm.double().tolist()
    for c, name in enumerate(classes):
        tp, gt, pred = cm[c, c].item(), cm[c].sum().item(), cm[:, c].sum().item()
        row = result["per_class"][name]
        assert row["pixels"] == gt
        if gt + pred - tp:
            assert row["iou"] == pytest.approx(tp / (gt + pred - tp))
        else:
            assert math.isnan(row["iou"])
        if gt:
            assert result["confusion"]["normalized"][c] == pytest.approx((cm[c].double() / gt).tolist())
    present = [r["iou"] for r in result["per_class"].values() if not math.isnan(r["iou"])]
    assert sum(present) / len(present) == pytest.approx(result["metrics"]["semseg/miou"])
    assert {"depth_rmse", "normals_mean"} <= set(result["per_class"][classes[0]])
    # The JSON (NaN as null) and the two pictures beside it.
    written = json.loads(out.read_text())
    assert written["confusion"]["counts"] == result["confusion"]["counts"]
    for name in ("metrics.confusion.png", "metrics.per_class.png"):
        with Image.open(out.parent / name) as im:
            assert im.format == "PNG" and im.size[0] > 200


def test_log_to_run_writes_eval_metrics_and_pictures_into_the_checkpoints_run(checkpoint):
    cfg, ck, run_id, _, classes = checkpoint
    result = run_evaluate(cfg, checkpoint=str(ck), log_run=True)
    assert result["logged_to_run"] == run_id
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    logged = client.get_run(run_id).data.metrics
    expected = eval_metrics(result)
    assert result["logged_metrics"] == len(expected) and logged == pytest.approx(expected)
    assert logged["eval/val/semseg/miou"] == pytest.approx(result["metrics"]["semseg/miou"])
    iou = {k for k in logged if k.startswith("eval/val/iou/")}
    finite = [c for c in classes if not math.isnan(result["per_class"][c]["iou"])]
    assert iou == {f"eval/val/iou/{c}" for c in finite}
    assert [m.step for m in client.get_metric_history(run_id, "eval/val/semseg/miou")] == [3]  # the epoch
    files = {a.path for a in client.list_artifacts(run_id, "eval/val")}
    assert files == {"eval/val/eval.json", "eval/val/confusion.png", "eval/val/per_class.png"}


def test_log_to_run_names_a_run_the_store_does_not_have(checkpoint, tmp_path):
    cfg, ck, _, _, _ = checkpoint
    other = cfg.model_copy(
        update={"tracking": cfg.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path}/other.db"})}
    )
    MlflowClient(tracking_uri=other.tracking.uri).search_experiments()  # an empty store
    with pytest.raises(ConfigError, match=r"--log-to-run: MLflow run '[0-9a-f]+' .* not found in sqlite:///"):
        run_evaluate(other, checkpoint=str(ck), log_run=True)


def test_cli_log_to_run_exit_code_and_lines(checkpoint, tmp_path):
    from pipelines.cli.main import cli

    cfg, ck, run_id, _, classes = checkpoint
    config = tmp_path / "cfg.yaml"
    import yaml

    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    r = CliRunner().invoke(cli, ["evaluate", "--config", str(config), "--checkpoint", str(ck), "--log-to-run"])
    assert r.exit_code == 0, r.output
    assert f"class {classes[0]}" in r.output and f"to MLflow run {run_id}" in r.output


def test_log_to_run_of_a_checkpoint_without_a_run_is_named(checkpoint, tmp_path):
    from pipelines.checkpoints import read_meta

    cfg, ck, _, model, classes = checkpoint
    meta = read_meta(ck)
    del meta["mlflow_run_id"]
    save_checkpoint(tmp_path / "bare", model, meta)
    with pytest.raises(ConfigError, match="--log-to-run: checkpoint .*bare names no MLflow run"):
        run_evaluate(cfg, checkpoint=str(tmp_path / "bare"), log_run=True)
