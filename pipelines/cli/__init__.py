"""The ``fusionpipe`` command line: one module per command group, each thin (parse, call, print).

:mod:`pipelines.cli.main` is the console script; :mod:`pipelines.cli.output` prints results and errors
the same way for every command (``--json``, exit codes, redacted URIs).
"""
