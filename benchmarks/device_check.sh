#!/usr/bin/env bash
# GPU checks for HALO's fused path, as one script (run on a CUDA machine from the repository root):
# correctness of the fused step against the reference on CUDA, then step timings for VGG-16-bn on a
# CIFAR-shaped batch of 64 (fp32 and bf16 autocast) and for the LeNets.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_fused.py -k "cuda" -rs
$PY benchmarks/penalty_overhead.py --device cuda --models vgg16-bn --batch 64 --image 32 --channels 3 --reps 20 --rounds 7
$PY benchmarks/penalty_overhead.py --device cuda --models vgg16-bn --batch 64 --image 32 --channels 3 --reps 20 --rounds 7 --amp
$PY benchmarks/penalty_overhead.py --device cuda --models lenet-300-100 lenet-5 --reps 50 --rounds 7
