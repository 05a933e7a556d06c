"""Measuring: image metrics (PSNR, SSIM, HaarPSI, NIQE, BRISQUE), the reference upscalers, `evaluate` (quality
against them) and `bench` (speed, FLOPs, memory). Runs the inference pipeline, so it may import inference,
flow, datasets, model and the shared leaves, never train or cli (docs/architecture.md)."""
