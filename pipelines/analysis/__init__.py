"""Reading results: evaluate a checkpoint exactly, compare tracked runs."""
