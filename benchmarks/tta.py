"""What multi-scale, flip and sliding-window inference cost against one plain forward (fusion.inference).

The modes of the official ANN test code (github.com/MendelXu/ANN, ``methods/seg/fcn_segmentor_test.py``),
on a Cityscapes-shaped image (1:2) and an ANN at output stride 8, eval mode, no_grad, fp32, one thread:

- ``plain``: one forward of the whole image (the official ``ss_test``);
- ``window``: sliding window at one scale (``sscrop_test``; window = the image height × 0.84, as 864 is
  to Cityscapes' 1024, stride ``int(0.667 × window)``);
- ``ms_flip``: scales 0.5-1.75 with flips, no window (``ms_test``, the ADE20K set-up);
- ``ms_flip_window``: scales 0.75, 1.0, 1.25 with flips, each by sliding window (``mscrop_test``, the
  Cityscapes set-up).

Time is process CPU time (the development machine is shared; its neighbours would dominate wall time),
the median of ``repeats`` runs after one warm-up run. Ratios ``<mode>_vs_plain``: the mode's time over the
plain forward's; ``<mode>_pixels_vs_plain``: the pixels the network is fed over the image's, which the
time ratio follows where the per-pixel cost of the network is even.

    python benchmarks/tta.py [--quick] [--json]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, parse_args  # noqa: E402


def fed_pixels(h: int, w: int, scales: list[float], flip: bool, window: tuple[int, int] | None) -> int:
    """Pixels the network is fed, by the rules of fusion.inference."""
    from fusion.inference import window_starts

    total = 0
    for s in scales:
        sh, sw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        if window is None or sh < window[0] or sw < window[1]:
            n = sh * sw
        else:
            n = len(window_starts(sh, window[0])) * len(window_starts(sw, window[1])) * window[0] * window[1]
        total += n * (2 if flip else 1)
    return total


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    import torch

    from fusion import build_model
    from fusion.inference import OFFICIAL_SCALES, predict_tta

    torch.set_num_threads(1)
    h, w = (96, 192) if args.quick else (128, 256)
    backbone, repeats = ("resnet18", 1) if args.quick else ("resnet101", 3)
    win = int(h * 864 / 1024)
    torch.manual_seed(0)
    net = build_model(
        {
            "name": "ann",
            "tasks": ["semseg"],
            "modalities": ["rgb"],
            "num_classes": 19,
            "backbone": backbone,
            "width": 0.25,
            "output_stride": 8,
        }
    ).eval()
    x = {"rgb": torch.randn(1, 3, h, w)}
    modes: dict[str, dict[str, Any]] = {
        "plain": {"scales": [1.0], "flip": False, "window": None},
        "window": {"scales": [1.0], "flip": False, "window": (win, win)},
        "ms_flip": {"scales": list(OFFICIAL_SCALES["ade20k"]), "flip": True, "window": None},
        "ms_flip_window": {"scales": list(OFFICIAL_SCALES["cityscapes"]), "flip": True, "window": (win, win)},
    }
    results = []
    with torch.no_grad():
        for name, kw in modes.items():
            times = []
            for i in range(repeats + 1):
                t0 = time.process_time()
                predict_tta(net, x, ["semseg"], **kw)
                if i:  # the first run is the warm-up
                    times.append(time.process_time() - t0)
            results.append(
                {
                    "mode": name,
                    "image": [h, w],
                    "backbone": f"{backbone} x0.25, output stride 8",
                    **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()},
                    "cpu_s": statistics.median(times),
                    "fed_pixels": fed_pixels(h, w, kw["scales"], kw["flip"], kw["window"]),
                }
            )
    base = results[0]
    ratios = {}
    for r in results[1:]:
        ratios[f"{r['mode']}_vs_plain"] = round(r["cpu_s"] / base["cpu_s"], 3)
        ratios[f"{r['mode']}_pixels_vs_plain"] = round(r["fed_pixels"] / base["fed_pixels"], 3)
    emit("tta", results, ratios, args.json)


if __name__ == "__main__":
    main()
