#!/usr/bin/env bash
# The CPU benchmark behind docs/benchmarks.md: the `small` architecture (random weights: speed does not
# depend on them), output sides 256..4096 px, linear vs softmax attention, Real-ESRGAN x4plus as the peer.
# Run from the repository root with the virtual environment active. Takes ~30-40 min on 2 busy cores.
set -euo pipefail
mkdir -p benchmarks/results docs
{ uptime; lscpu | sed -n '1,20p'; free -g; } > benchmarks/results/machine_small.txt
linearsr bench --size small --sizes 256,512,1024,2048,4096 --attention linear,softmax --steps 1 \
  --repeats 5 --warmup 2 --time-cap 600 \
  --json benchmarks/results/bench_small.json --plot docs/bench_small.png
uptime >> benchmarks/results/machine_small.txt
