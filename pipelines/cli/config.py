"""``fusionpipe config show``: the experiment config a run would use, resolved and validated.

It loads the YAML, applies ``--set`` overrides, validates every section as ``train`` does, and makes the
relative paths absolute against the project root (``data.shards``, ``checkpoint.storage_path``, a sqlite
``tracking.uri``), without starting Ray or opening the tracking store. The components are imported inside
the command, as in the other command modules: validation imports the model and task registries (torch).
"""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.output import emit, fail


@click.group()
def config() -> None:
    """Experiment configs: show one as a run would use it."""


@config.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True, help="experiment YAML")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def show(config_file: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print the resolved, validated config (YAML): overrides applied, defaults filled in, relative paths
    made absolute against the project root; credentials in URIs hidden. Exit 2 on an invalid config."""
    import yaml

    from pipelines.config import ConfigError, load_config, project_root
    from pipelines.track.tracker import redacted_config

    try:
        cfg = load_config(config_file, list(overrides)).resolved_paths()
    except ConfigError as e:
        fail(str(e), as_json, code=2)
        return
    resolved = redacted_config(cfg)
    root = project_root()
    header = f"# {config_file}" + "".join(f" --set {o}" for o in overrides)
    header += f"\n# resolved against the project root {root}; validated\n"
    emit(
        {"config_file": str(config_file), "overrides": list(overrides), "project_root": str(root), "config": resolved},
        as_json,
        header + yaml.safe_dump(resolved, sort_keys=False).rstrip("\n"),
    )
