"""``fusionpipe study``: a paper table, every row trained under one budget and several seeds (docs/studies.md)."""
