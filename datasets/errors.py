"""The error a dataset source raises on bad input, in a module of its own: the sources
(:mod:`datasets.sources`) and the synthetic generator they wrap (:mod:`datasets.synthetic`) both raise
it, and the generator does not import the sources."""

from __future__ import annotations


class SourceError(ValueError):
    """Bad source input (missing file, bad value); the message names the file/key at fault."""
