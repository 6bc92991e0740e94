"""Strict JSON for everything the project writes or prints (meta.json, summaries, ``--json``)."""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON: a NaN or infinite value (a metric with nothing to measure) becomes null, where
    ``json.dumps`` would write a bare ``NaN`` that JSON parsers reject."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)
