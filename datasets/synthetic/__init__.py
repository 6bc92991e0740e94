"""Procedural RGB-D indoor scenes: scene sampling, ray casting, appearance and sensor models.

The public entry point is :class:`datasets.sources.synthetic.SyntheticSource` (and its
module-level ``render``); see docs/synthetic.md.
"""
