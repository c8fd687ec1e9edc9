#!/usr/bin/env bash
# GPU checks, as one script (run on a CUDA machine from the repository root; needs only torch, and
# pytest for the test lines — the tests that need pydantic run only where it is installed):
# 1. HALO's fused step on CUDA: equal to the reference formulation, and no host-device synchronisation
#    in a training step (fused HALO with SGD / AdamW, masks enforced);
# 2. the training path on CUDA (bf16 autocast, channels_last) when the package's dependencies are there;
# 3. step timings for VGG-16-bn and ResNet-18 at full width on a CIFAR-shaped batch of 64, fp32 and bf16
#    autocast, and the LeNets (benchmarks/penalty_overhead.py);
# 4. whole epochs of VGG-16-bn on 50,000 synthetic CIFAR-shaped images, with and without HALO, fp32 and
#    bf16: seconds per epoch, images/s and peak memory (benchmarks/cifar_epochs.py).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/penalties/halo/test_fused.py -k "cuda" -rs
if $PY -c "import pydantic, tomli_w, tqdm" 2>/dev/null; then
  $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/training/test_gpu_path.py -k "cuda" -rs
else
  echo "pydantic/tomli_w/tqdm missing: skipping tests/training/test_gpu_path.py (the training loop needs them)"
fi
CONV="--device cuda --models vgg16-bn resnet18 --image 32 --channels 3 --reps 20 --rounds 7 --processes 1"
$PY benchmarks/penalty_overhead.py $CONV
$PY benchmarks/penalty_overhead.py $CONV --amp
$PY benchmarks/penalty_overhead.py --device cuda --models lenet-300-100 lenet-5 --reps 50 --rounds 7 --processes 1
$PY benchmarks/cifar_epochs.py --device cuda --model vgg16-bn --epochs 2
