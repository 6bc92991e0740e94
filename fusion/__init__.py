"""fusionpipe models: plain PyTorch, no Ray, MLflow or DVC.

Contract (docs/models.md): ``build_model(cfg)`` returns an ``nn.Module``
whose forward takes ``{"rgb": B×3×H×W float, "depth": B×1×H×W metres}`` (the modalities the model
was built for) and returns ``{task: prediction at input resolution, ..., "aux": {name: {task:
prediction}}}``. ``aux`` holds the intermediate predictions its loss needs (deep supervision per
scale, initial predictions, per-modality outputs); ``model.aux_weights`` maps an aux name to its
loss weight (default 1.0) and ``model.regularization()`` returns extra loss terms (e.g. CEN's L1
on BN scales) as ``{name: scalar tensor}``.
"""

# Importing these two registers the built-in tasks (in the task dict, fusion.tasks) and the built-in
# models (in fusion.registry), so whoever imports anything of fusion finds them all registered.
import fusion.builtin_tasks  # noqa: F401
import fusion.models  # noqa: F401
from fusion.config import ModelConfig
from fusion.registry import build_model, list_models, register_model

__all__ = ["ModelConfig", "build_model", "list_models", "register_model"]
