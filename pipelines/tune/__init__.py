"""Sweeps: the sweep spec, the Ray Tune driver and its callback."""
