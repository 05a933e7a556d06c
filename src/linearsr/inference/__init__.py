"""Upscaling for users: `LinearSR.enhance` (pipeline.py), image kinds in and out, tiled sampling and its
memory planner, the colour fix and the web page. Imports flow, datasets, model and the shared leaves
(docs/architecture.md)."""
