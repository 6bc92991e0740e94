"""``python -m pipelines.cli`` is ``fusionpipe`` (a submitted Ray job runs it this way)."""

from pipelines.cli.main import main

main()
