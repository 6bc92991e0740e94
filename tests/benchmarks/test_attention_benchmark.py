import torch

from benchmarks.attention import CHANNELS, KEY_VALUE_CHANNELS, cpu_peak_allocated_bytes, measure

MIB = 2**20


def test_peak_allocated_counts_live_tensors_at_their_peak_not_what_existed_before():
    existing = torch.empty(4 * MIB, dtype=torch.uint8)  # allocated before: not counted

    def fn():
        a = torch.empty(3 * MIB, dtype=torch.uint8)
        b = torch.empty(5 * MIB, dtype=torch.uint8)  # peak: a and b live together
        del a, b
        c = torch.empty(2 * MIB, dtype=torch.uint8)
        return c

    assert cpu_peak_allocated_bytes(fn) == 8 * MIB
    assert existing.numel() == 4 * MIB


def test_peak_allocated_counts_intermediates_the_function_never_names():
    x = torch.randn(512, 512)
    # softmax of x @ x.T: the product, which fn never binds, and the softmax (two 1 MiB matrices) are
    # live at once.
    assert cpu_peak_allocated_bytes(lambda: torch.softmax(x @ x.T, dim=-1)) >= 2 * 512 * 512 * 4


def test_measured_peaks_are_the_blocks_live_tensors():
    h, w = 32, 32
    n, d = h * w, KEY_VALUE_CHANNELS
    nl = measure("nonlocal", "attention", h, w, "cpu", repeats=1)
    apnb = measure("apnb", "attention", h, w, "cpu", repeats=1)
    # By the output projection only its input (the N×d context) and its output (N×C) are live: the
    # full-resolution projections were freed first. That is APNB's peak.
    output_stage = n * d * 4 + n * CHANNELS * 4
    assert apnb["activation_bytes"] == output_stage
    # Non-local: the N×N logits and their softmax, with the query/key and value projections (N×d
    # each), outweigh the output stage from N = 1024 on.
    logits_stage = 2 * n * n * 4 + 2 * n * d * 4
    assert logits_stage > output_stage
    assert nl["activation_bytes"] == logits_stage
    for r in (nl, apnb):
        assert r["peak_bytes"] == r["weights_bytes"] + r["activation_bytes"]
        assert r["peak_rss_bytes"] == r["weights_bytes"] + r["rss_activation_bytes"]
    assert apnb["samples"] == 110 and nl["samples"] == n
