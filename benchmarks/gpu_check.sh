#!/usr/bin/env bash
# The GPU checks in one run (`make gpu-check`), most wanted first, so that a run cut short
# still answers the open questions: the tests marked gpu; the data plane from the service
# into GPU pages beside plain pinned and GPU-to-GPU copies; TTFT with cache hits on the
# Llama-3-8B shape with random weights (no GGUF there, so no SmolLM2); then the engine
# benchmark on the same shape, with and without decode CUDA graphs (its results are in
# already). The step timeouts add up to about 17 minutes on top of the tests.
# Logs and JSON go to OUT (default benchmarks/results/gpu/). Usage: gpu_check.sh [PYTHON [OUT]]
set -uo pipefail
py=${1:-python3}
out=${2:-benchmarks/results/gpu}
mkdir -p "$out"
status=0
"$py" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' | tee "$out/device.txt" || status=1
"$py" -m pytest -m gpu -v -p no:cacheprovider --timeout 120 \
  tests/engine/test_gpu.py tests/engine/test_penalties.py tests/engine/test_page_loader.py \
  tests/tiers/test_slab.py tests/cacheserver/test_shared_memory.py tests/benchmarks/test_dataplane_pages.py 2>&1 \
  | tee "$out/pytest.log" || status=1
timeout 240 "$py" -m clients.cli bench dataplane --device cuda --json "$out/dataplane-cuda.json" 2>&1 \
  | tee "$out/dataplane-cuda.log" || status=1
timeout 300 "$py" -m clients.cli bench ttft --device cuda --model-shape llama3-8b --repeats 3 \
  --json "$out/ttft-llama3-8b.json" --plot "$out/ttft-llama3-8b.png" 2>&1 | tee "$out/ttft-llama3-8b.log" || status=1
timeout 330 "$py" -m clients.cli bench engine --device cuda --model-shape llama3-8b --max-seconds 200 \
  --json "$out/engine-llama3-8b.json" 2>&1 | tee "$out/engine-llama3-8b.log" || status=1
# What the decode graphs give: the same decode figures with every step eager.
timeout 150 "$py" -m clients.cli bench engine --device cuda --model-shape llama3-8b --no-cuda-graphs --no-hf \
  --prefill-lengths 512 --batches 1,8,32 --max-seconds 60 \
  --json "$out/engine-llama3-8b-eager.json" 2>&1 | tee "$out/engine-llama3-8b-eager.log" || status=1
exit $status
