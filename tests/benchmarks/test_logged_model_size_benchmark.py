"""benchmarks/logged_model_size.py --quick prints the benchmark JSON with sizes that add up."""

import json
import sys

from tests import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from benchmarks import logged_model_size  # noqa: E402


def test_quick_run_reports_a_weights_only_best_checkpoint(capsys):
    logged_model_size.main(["--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "logged_model_size"
    (r,) = report["results"]
    assert (r["backbone"], r["width"], r["optimizer"]) == ("hrnet48", 0.25, "adam")
    # Adam keeps two tensors per parameter: the full checkpoint is about three times the weights.
    assert 2.9 < r["checkpoint_with_optimizer_bytes"] / r["checkpoint_weights_only_bytes"] < 3.1
    assert abs(r["checkpoint_weights_only_bytes"] - r["logged_model_bytes"]) < 4096  # model.pt + meta.json
    assert r["run_artifacts_before_bytes"] - r["run_artifacts_now_bytes"] == (
        r["checkpoint_with_optimizer_bytes"] - r["checkpoint_weights_only_bytes"]
    )
    assert report["ratios"]["best_checkpoint_now_vs_before"] < 0.35
