"""Two-stage DiR training: typed configs, data, flat loops, checkpoints, metrics and plots."""
