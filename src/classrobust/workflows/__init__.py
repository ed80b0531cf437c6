"""Workflows that combine the layers below: evaluate a checkpoint and write its report, calibrate
a checkpoint into a new one, run an experiment grid, the demo. The CLI calls these; so can you."""
