#!/usr/bin/env bash
# One-shot check on a CUDA machine (the project's lent H100), run from the repository root:
#   1. the whole test suite under that machine's PyTorch (a different release than ours),
#   2. training on the GPU: GMP on LeNet-300-100 / MNIST, and coupled-channel GMP on
#      ResNet-20 over a generated CIFAR-10 layout (index buffers and gates on the device).
# Expects torch, numpy, tqdm, pytest installed; torch-pruning as a wheel in .whl/, MNIST
# and Fashion-MNIST IDX .gz files in .data/ (neither is in git). Writes to $OUT (or /tmp).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LEARNPRUNE_DATA=$PWD/.data PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist && cp .data/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0))"

echo "== test suite (CPU tests) under this torch"
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -15

echo "== GMP on LeNet-300-100, CUDA"
python3 -m learnprune train --model lenet300 --data mnist --method gmp --target 0.95 \
    --epochs 3 --device cuda --out "$OUT/lenet300-gmp-cuda" --no-progress 2>&1 | tail -12

echo "== coupled-channel GMP on ResNet-20, CUDA, generated CIFAR-10 layout"
python3 - <<'PY'
import pickle, numpy as np, pathlib
root = pathlib.Path("/tmp/cifar/cifar-10-batches-py"); root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    labels = rng.integers(0, 10, 400)
    data = (rng.integers(0, 64, (400, 3072)) + labels[:, None] * 19).astype(np.uint8)
    pickle.dump({b"data": data, b"labels": labels.tolist()}, open(root / name, "wb"), protocol=2)
PY
python3 -m learnprune train --model resnet20 --data cifar10 --data-dir /tmp/cifar \
    --method gmp --groups coupled --target 0.5 --epochs 2 --device cuda --batch-size 128 \
    --out "$OUT/resnet20-coupled-cuda" --no-progress 2>&1 | tail -30
rm -f "$OUT"/*/checkpoint.pt "$OUT"/*/model.pt  # only the small result files come back
