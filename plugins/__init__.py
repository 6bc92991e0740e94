"""The project's plugins: modules here register tasks, shard members or models when imported.

List one in a config as ``plugins: [plugins.my_tasks]`` (docs/models.md, "A new task end to end: a
plugin"). The command must run from the repository root, as ``dvc repro`` and ``fusionpipe submit``
do: the root is on the import path then. A plugin kept here is

- a dependency of the DVC ``train`` and ``evaluate`` stages (``dvc.yaml``): editing it re-runs them;
- covered by the ``git.commit`` / ``git.dirty`` tags once committed, besides its own
  ``plugin.<module>.sha256`` tag;
- uploaded with the repository by ``fusionpipe submit``, so every node of a cluster can import it.
"""
