"""Training: the `Trainer` loop (loop.py), its hooks, validation, DDP, the config, training state, the run
folder layout, ESGF knees, recipes of stages, and ablations. May import everything but cli
(docs/architecture.md)."""
