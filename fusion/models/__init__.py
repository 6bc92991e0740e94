"""Every model module, imported so that its ``@register_model`` builders run.

Adding a model is one file plus one name in ``MODEL_MODULES``; an import error in any of them is
raised, never hidden.
"""

from __future__ import annotations

import importlib

MODEL_MODULES = (
    "fusion.models.cen",
    "fusion.models.fusion_baselines",
    "fusion.models.ann",
    "fusion.models.multitask",
)

for _name in MODEL_MODULES:
    importlib.import_module(_name)
