#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none), as one script; results go to $1 (default gpu-check/).
#   1. the 16-bit precision matrix (tests/model/test_precision.py) on CUDA: CUDA autocast and 16-bit weights;
#   2. scripts/gpu_check.py: parity with HF ModernBERT's default configuration on CUDA, bf16 autocast training
#      curves of every FFN variant, Trainer(bf16=True), FlashAttention varlen vs sdpa where flash_attn is installed;
#   3. the encoder benchmark's GPU rows (bf16): the geometry section and the long-context section.
# Each step runs even when an earlier one failed; its exit status is printed.
set -u
out=${1:-gpu-check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
MODERNALBERT_TEST_DEVICE=cuda timeout 180 python3 -m pytest -q -p no:cacheprovider tests/model/test_precision.py \
    --junitxml "$out/precision_cuda.xml" 2>&1 | tail -15
echo "precision matrix on CUDA: exit ${PIPESTATUS[0]}"
timeout 150 python3 scripts/gpu_check.py --out "$out/gpu_check.json"
echo "gpu_check.py: exit $?"
timeout 100 python3 benchmarks/encoder.py --sections geometry --device cuda --dtype bfloat16 --rounds 5 \
    --train-rounds 3 --fixed-batch 32 --var-batch 64 --markdown "$out/geometry_cuda.md" --json "$out/geometry_cuda.json"
echo "encoder geometry (cuda bf16): exit $?"
timeout 120 python3 benchmarks/encoder.py --sections long --device cuda --dtype bfloat16 --rounds 5 \
    --train-rounds 3 --long-fixed-batch 8 --long-var-batch 32 --markdown "$out/long_cuda.md" --json "$out/long_cuda.json"
echo "encoder long (cuda bf16): exit $?"
