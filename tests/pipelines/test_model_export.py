"""The model logged to MLflow at the end of a run loads without pickle and serves any batch size."""

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from fusion import build_model
from pipelines.checkpoints import save_checkpoint
from pipelines.config import ConfigError
from pipelines.track.export import PackedModel, log_final_model
from pipelines.track.registry import register_logged_model, resolve_model_uri
from pipelines.track.tracker import Tracker


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    # Once for the module: tracing the model for torch.export takes most of a minute on a CPU.
    tmp_path = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
        yield _log(tmp_path)


def _log(tmp_path):
    mcfg = {
        "name": "mtl_baseline",
        "tasks": ["semseg", "depth"],
        "modalities": ["rgb", "depth"],
        "num_classes": 4,
        "backbone": "resnet18",
        "width": 0.125,
        "output_stride": 32,
        "pretrained": None,
        "options": {"fusion": "early"},
    }
    torch.manual_seed(0)
    model = build_model(mcfg).eval()
    save_checkpoint(tmp_path / "ckpt", model, {"model_config": mcfg, "epoch": 0})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.create_run(uri, "export", "run", {})
    model_uri = log_final_model(
        tracker,
        str(tmp_path / "ckpt"),
        {"model_config": {**mcfg, "pretrained": "/absent/imagenet.pth"}, "classes": ["a", "b", "c", "d"]},
        (32, 48),
    )
    tracker.end()
    mlflow.set_tracking_uri(uri)
    return model, mcfg, model_uri, uri, tracker.run_id


def test_logged_model_serves_other_batch_sizes_with_the_checkpoint_values(logged_model):
    model, mcfg, model_uri, *_ = logged_model
    loaded = mlflow.pytorch.load_model(model_uri)
    packed = PackedModel(model, mcfg["modalities"], {"rgb": 3, "depth": 1}, mcfg["tasks"]).eval()
    for batch, h, w in ((1, 32, 48), (3, 32, 48), (2, 50, 70), (1, 97, 33)):
        x = torch.randn(batch, 4, h, w)
        with torch.no_grad():
            expected = packed(x)
            got = loaded(x)
        assert got.shape == (batch, 4 + 1, h, w)  # 4 semseg logits + 1 depth channel, at the input's size
        assert torch.allclose(got, expected, atol=1e-5)
    info = mlflow.models.get_model_info(model_uri)
    assert info.metadata["output_channels"] == {"semseg": [0, 4], "depth": [4, 5]}
    assert info.metadata["input_channels"] == {"rgb": 3, "depth": 1}
    assert info.metadata["classes"] == ["a", "b", "c", "d"]
    assert info.metadata["tasks"] == ["semseg", "depth"]
    assert info.metadata["normalisation"]["rgb"]["mean"] == [0.485, 0.456, 0.406]
    assert info.metadata["model_config"]["pretrained"] is None  # the ImageNet file was not read


def test_logged_model_signature_names_the_packed_input(logged_model):
    _, _, model_uri, *_ = logged_model
    sig = mlflow.models.get_model_info(model_uri).signature
    spec = sig.inputs.to_dict()[0]
    assert list(spec["tensor-spec"]["shape"]) == [-1, 4, -1, -1]  # any batch, any H x W
    assert spec["tensor-spec"]["dtype"] == str(np.dtype("float32"))


def test_registered_versions_resolve_by_number_and_alias(logged_model):
    _, _, model_uri, uri, run_id = logged_model
    first = register_logged_model(uri, run_id, model_uri, "export-test")
    second = register_logged_model(uri, run_id, model_uri, "export-test", alias="best")
    assert (first.version, second.version) == ("1", "2")
    assert resolve_model_uri("models:/export-test/1", uri).run_id == run_id
    by_alias = resolve_model_uri("models:/export-test@best", uri)
    assert (by_alias.version, by_alias.model_uri) == ("2", "models:/export-test/2")
    assert MlflowClient(uri).get_run(run_id).data.tags["fusionpipe.registered_model"] == "models:/export-test/2"
    with pytest.raises(ConfigError, match=r"has no version 7 of model 'export-test'; its versions: 1, 2"):
        resolve_model_uri("models:/export-test/7", uri)
    with pytest.raises(ConfigError, match=r"has no alias 'champion' of model 'export-test'; its versions: 1, 2"):
        resolve_model_uri("models:/export-test@champion", uri)
    with pytest.raises(ConfigError, match=r"'models:/a/b/c': expected models:/NAME/VERSION or models:/NAME@ALIAS"):
        resolve_model_uri("models:/a/b/c", uri)
