"""benchmarks/converters.py --quick prints one JSON object with a build and an encode rate per dataset."""

import json
import subprocess
import sys

import pytest

from tests import REPO_ROOT

NATIVE = {
    "nyud-mt": (480, 640),
    "pascal-mt": (375, 500),
    "sunrgbd": (530, 730),
    "cityscapes": (1024, 2048),
    "ade20k": (512, 683),
}


def test_quick_run_reports_every_dataset_at_its_native_size():
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "converters.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1  # exactly one JSON object, nothing else on stdout
    report = json.loads(lines[0])
    assert report["benchmark"] == "converters" and report["machine"]["cpu_count"] >= 1
    results = {r["name"]: r for r in report["results"]}
    assert list(results) == list(NATIVE)
    for name, r in results.items():
        assert (r["height"], r["width"]) == NATIVE[name]
        assert r["samples"] >= 1 and r["members"][0] == "rgb"
        assert r["build_samples_per_s_cpu"] > 0 and r["encode_samples_per_s_cpu"] > 0
        assert r["build_vs_encode"] == pytest.approx(
            r["build_samples_per_s_cpu"] / r["encode_samples_per_s_cpu"], rel=0.01
        )
        assert r["build_cpu_ms_per_sample"] == pytest.approx(1000 / r["build_samples_per_s_cpu"], rel=0.01)
        assert r["encoded_kib_per_sample"] > 0
    assert results["pascal-mt"]["members"] == ["rgb", "semseg", "parts", "sal", "normals", "edge"]
    assert results["sunrgbd"]["members"] == ["rgb", "depth", "semseg"]
    ratios = report["ratios"]
    assert ratios["target"] == 0.8
    assert {k: v for k, v in ratios.items() if k.endswith("_build_vs_encode")} == {
        f"{n}_build_vs_encode": results[n]["build_vs_encode"] for n in NATIVE
    }
    assert ratios["build_vs_encode_min"] == min(r["build_vs_encode"] for r in results.values())
