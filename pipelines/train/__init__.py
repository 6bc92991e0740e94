"""Training: the driver that sets up a Ray Train run, the per-rank worker loop and its steps."""
