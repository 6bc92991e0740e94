"""One tiny real run that starts from ImageNet weights given as a relative path, registers its model, and is
then used through the registry: the artifacts are weights only, the logged model takes any H x W and records
its normalisation, classes and tasks, and predict and evaluate take models:/NAME/VERSION and
models:/NAME@ALIAS, without the ImageNet file."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from fusion.backbones import build_backbone
from pipelines.analysis.evaluate import run_evaluate
from pipelines.analysis.predict import run_predict
from pipelines.checkpoints import TRAIN_STATE, read_meta
from pipelines.train.driver import run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registered(ray_cluster, smoke_shards, tmp_path_factory):
    from pipelines.config import load_config
    from tests import REPO_ROOT

    root = tmp_path_factory.mktemp("project")
    (root / "weights").mkdir()
    torch.manual_seed(0)
    imagenet = build_backbone("resnet18", width=0.125).state_dict()
    torch.save(imagenet, root / "weights" / "r18.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONPIPE_PROJECT_ROOT", str(root))  # model.pretrained is read from the project root
        cfg = load_config(
            REPO_ROOT / "configs" / "smoke.yaml",
            [
                f"data.shards={smoke_shards}",
                "tracking.experiment=test",
                f"tracking.uri=sqlite:///{root}/mlflow.db",
                f"checkpoint.storage_path={root}/ray",
                "model.pretrained=weights/r18.pth",
                "train.epochs=1",
                "train.workers=1",
                "train.preview_every=0",
                "tracking.register_as=tiny",
                "tracking.register_alias_on_train=true",
            ],
        )
        summary = run_training(cfg, run_name="registered")
    (root / "weights" / "r18.pth").unlink()  # from here on nothing may need it
    return cfg, summary, f"sqlite:///{root}/mlflow.db"


def test_run_registers_a_weights_only_model_with_its_metadata(registered, smoke_shards, tmp_path):
    cfg, summary, uri = registered
    assert summary["registered_model"] == "models:/tiny/1"
    client = MlflowClient(uri)
    run_id = summary["mlflow_run_id"]
    assert client.get_run(run_id).data.params["model.pretrained"].endswith("weights/r18.pth")
    assert str(client.get_model_version_by_alias("tiny", "best").version) == "1"
    best = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints/best")}
    last = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints/last")}
    assert TRAIN_STATE not in best and TRAIN_STATE in last  # no optimizer state where only weights are used
    meta = read_meta(client.download_artifacts(run_id, "checkpoints/best", str(tmp_path)))
    assert meta["weights_only"] is True and meta["normalisation"]["rgb"]["std"] == [0.229, 0.224, 0.225]
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info("models:/tiny/1")
    manifest = json.loads((smoke_shards / "manifest.json").read_text())
    assert info.metadata["classes"] == manifest["classes"]
    assert info.metadata["tasks"] == ["semseg", "depth", "normals", "edge"]
    assert info.metadata["normalisation"]["rgb"]["mean"] == [0.485, 0.456, 0.406]
    spec = info.signature.inputs.to_dict()[0]["tensor-spec"]
    assert list(spec["shape"]) == [-1, 3, -1, -1]


def test_predict_and_evaluate_take_registry_uris(registered, tmp_path):
    cfg, summary, uri = registered
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 75, 3), dtype=np.uint8)).save(folder / "a.png")
    outs = {}
    for ref in ("models:/tiny@best", "models:/tiny/1", summary["mlflow_run_id"]):
        out = tmp_path / ref.replace("/", "_").replace(":", "_").replace("@", "_")
        result = run_predict(ref, out, uri, images=folder)
        assert result["num_samples"] == 1 and result["samples"][0]["height"] == 45
        outs[ref] = (out / "a.semseg_ids.png").read_bytes()
    assert len(set(outs.values())) == 1  # the same weights whichever way the model is named
    ev = run_evaluate(cfg, run_id="models:/tiny@best")
    assert ev["model_uri"] == "models:/tiny@best" and ev["epoch"] == 0
    assert 0.0 <= ev["metrics"]["semseg/miou"] <= 1.0
