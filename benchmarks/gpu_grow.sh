#!/usr/bin/env bash
# Network growing with DessiLBI on the lent GPU (benchmarks/ of issue 4): VGG-16 from 16
# filters per conv on Fashion-MNIST padded to 32x32. The reference schedule (10 local epochs,
# fine-tune 40) does not fit the device time lent here; this run uses 4 local epochs,
# at most 6 rounds and a 12-epoch fine-tune, the rest as the reference (tau 0.8, +8 or
# x1.1, nu 100, lr 0.05, batch 128). Needs .whl/ (torch-pruning) and .data/ (Fashion-MNIST).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-grow}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LEARNPRUNE_DATA=$PWD/.data PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m learnprune grow --model vgg16 --data fashion-mnist --pad-to-32 --start-width 16 \
    --tau 0.8 --local-epochs 4 --max-rounds 6 --finetune-epochs 12 --nu 100 --lr 0.05 \
    --batch-size 128 --device cuda --out "$OUT/grow-vgg16" 2>&1 | grep -v "^epoch  *[0-9]*/12" 
rm -f "$OUT"/grow-vgg16/model.pt
