"""The ``fusionpipe`` command line (README.md; each command's module: docs/architecture.md)."""

from __future__ import annotations

import os

# Off by default: this project runs without network, and both tools stall or warn trying to phone home.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import click  # noqa: E402

from pipelines.cli.compare import compare  # noqa: E402
from pipelines.cli.config import config  # noqa: E402
from pipelines.cli.data import data  # noqa: E402
from pipelines.cli.jobs import jobs, submit  # noqa: E402
from pipelines.cli.predict import predict  # noqa: E402
from pipelines.cli.run import evaluate, train  # noqa: E402
from pipelines.cli.study import study  # noqa: E402
from pipelines.cli.tune import tune  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fusionpipe")
def cli() -> None:
    """fusionpipe: multi-task and RGB-D dense prediction, from shards to tracked runs."""


cli.add_command(data)
cli.add_command(train)
cli.add_command(evaluate)
cli.add_command(predict)
cli.add_command(tune)
cli.add_command(study)
cli.add_command(compare)
cli.add_command(config)
cli.add_command(submit)
cli.add_command(jobs)


def main() -> None:
    # The project root (pipelines.config.project_root) is the directory the command starts in, fixed now:
    # a submitted job's working directory can be removed by Ray while the job runs, and every process
    # this one starts (a local Ray's workers) reads the same root.
    os.environ.setdefault("FUSIONPIPE_PROJECT_ROOT", os.getcwd())
    cli()


if __name__ == "__main__":
    main()
