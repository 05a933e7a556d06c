"""Training data: photo folders and the seeded training stream (photos.py), its config, the Real-ESRGAN-style
degradations, and the demo photo fetcher. Imports only `linearsr.model.network` and the shared leaves
(docs/architecture.md)."""
