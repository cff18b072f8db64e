#!/usr/bin/env bash
# Network growing with DessiLBI on the lent GPU (benchmarks/ of issue 4): VGG-16 from 16
# filters per conv on Fashion-MNIST padded to 32x32, the reference's settings (tau 0.8, +8 or
# x1.1, nu 100, lr 0.05, batch 128) with 8 local epochs per round (3,752 steps, about the
# reference's 10 CIFAR epochs of 391 steps, so the same path time per round), at most 5
# rounds and a 10-epoch fine-tune instead of 40 (the device time lent here is 15 minutes).
# Needs .whl/ (torch-pruning) and .data/ (Fashion-MNIST).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-grow}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LEARNPRUNE_DATA=$PWD/.data PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m learnprune grow --model vgg16 --data fashion-mnist --pad-to-32 --start-width 16 \
    --tau 0.8 --local-epochs 8 --max-rounds 5 --finetune-epochs 10 --nu 100 --lr 0.05 \
    --batch-size 128 --device cuda --out "$OUT/grow-vgg16" 2>&1 | grep -v "^epoch  *[0-9]*/10 " 
rm -f "$OUT"/grow-vgg16/model.pt
