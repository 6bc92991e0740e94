"""MLflow's model registry: register a run's logged model, and find the run behind a ``models:/`` URI.

``tracking.register_as: NAME`` registers the model a run logged at its end (``pipelines/track/export.py``)
as a new version of ``NAME``; ``fusionpipe tune`` registers its best trial's and moves the alias
``tracking.register_alias`` (``best``) to it. ``predict`` and ``evaluate`` take ``models:/NAME/VERSION``
and ``models:/NAME@ALIAS`` through :func:`resolve_model_uri`: the version's source run, whose weights-only
best checkpoint is what the version was logged from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipelines.config import ConfigError
from pipelines.track.redact import redact_url_password
from pipelines.track.tracker import run_not_found

#: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version and the run it was logged in."""

    name: str
    version: str
    run_id: str
    model_uri: str  # models:/NAME/VERSION


def is_model_uri(text: str) -> bool:
    return text.startswith("models:/")


def register_logged_model(
    tracking_uri: str, run_id: str, model_uri: str, name: str, alias: str | None = None
) -> RegisteredModel:
    """Register ``model_uri`` (a model logged in run ``run_id``) as a new version of ``name``; with
    ``alias``, point the alias at that version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except Exception as e:  # noqa: BLE001 - only "no such model" means create it; a store failure is raised
        if not run_not_found(e):
            raise
        client.create_registered_model(name, tags={"fusionpipe": "true"})
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags={"fusionpipe.run_id": run_id})
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    client.set_tag(run_id, "fusionpipe.registered_model", f"models:/{name}/{mv.version}")
    return RegisteredModel(name, str(mv.version), run_id, f"models:/{name}/{mv.version}")


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, version)


def resolve_model_uri(uri: str, tracking_uri: str) -> RegisteredModel:
    """The registered version ``uri`` names (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) and its run.
    A malformed URI, an unknown model, version or alias is a ConfigError naming it (exit 2); a store that
    fails is raised as it is (exit 3)."""
    from mlflow.tracking import MlflowClient

    m = MODEL_URI.fullmatch(uri)
    if m is None:
        raise ConfigError(f"model URI {uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    client = MlflowClient(tracking_uri=tracking_uri)
    name, version, alias = m["name"], m["version"], m["alias"]
    where = redact_url_password(tracking_uri)
    try:
        mv: Any = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    except Exception as e:  # noqa: BLE001 - "not found" is the input's fault; a store failure is raised
        if not (run_not_found(e) or _unknown_alias(e)):
            raise
        try:
            known = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
        except Exception:  # noqa: BLE001 - only for the message
            known = []
        what = f"version {version}" if version else f"alias {alias!r}"
        have = f"; its versions: {', '.join(sorted(known, key=int))}" if known else " (no such registered model)"
        if not known and _exists(client, name):
            have = " (it has no versions)"
        raise ConfigError(f"model URI {uri!r}: {where} has no {what} of model {name!r}{have}") from None
    if not mv.run_id:
        raise ConfigError(f"model URI {uri!r}: version {mv.version} of {name!r} was not logged by a run")
    return RegisteredModel(name, str(mv.version), mv.run_id, f"models:/{name}/{mv.version}")


def _unknown_alias(e: Exception) -> bool:
    # MLflow reports an alias that does not exist as a bad parameter, not as a missing resource.
    return getattr(e, "error_code", None) == "INVALID_PARAMETER_VALUE" and "alias" in str(e) and "not found" in str(e)


def _exists(client: Any, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - only for the message
        return False
    return True
