"""The flow-matching maths around the network: the time convention and its sampler (schedule.py), the loss,
the ODE/SDE samplers with one signature, `super_resolve` (sample.py), classifier-free guidance and the SNR
expert boundaries. Imports only `linearsr.model.network` and the shared leaves (docs/architecture.md)."""
