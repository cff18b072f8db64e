#!/usr/bin/env bash
# CUDA check of the learned methods on the lent GPU, run from the repository root: their
# unit tests under that machine's PyTorch, then one short CUDA training of each (gates,
# noise buffers, costs and index tensors must all follow the model to the device).
# Needs torch-pruning as a wheel in .whl/ and MNIST in .data/mnist (neither is in git).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-learned}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LEARNPRUNE_DATA=$PWD/.data PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0))"
echo "== unit tests of SCL, DessiLBI, DiffPrune, hard-concrete under this torch"
python3 -m pytest -q -p no:cacheprovider tests/test_scl.py tests/test_dessilbi.py \
    tests/test_diffprune.py tests/test_hardconcrete.py -k "not cli" 2>&1 | tail -4
run() {  # name, then train arguments
    local name=$1; shift
    python3 -m learnprune train "$@" --epochs 1 --device cuda --out "$OUT/$name" \
        --quiet --no-progress 2>&1 | tail -3
    python3 -c "import json; d = json.load(open('$OUT/$name/final.json')); print('$name', d['architecture'], 'error %.2f%%' % (100 * d['test_error']), 'sparsity %.2f%%' % (100 * d['sparsity']), '%.1f s' % d['seconds'])"
}
run hardconcrete-lenet5caffe --recipe recipes/lenet5caffe-hardconcrete.toml
run diffprune-units-flops --recipe recipes/lenet5caffe-diffprune-structured.toml --set 'method.target={flops=0.06}'
run diffprune-activation-stochastic --recipe recipes/lenet300-diffprune.toml --set 'method.groups="activation"' --set 'method.mode="stochastic"'
run diffprune-element --recipe recipes/lenet300-diffprune.toml --target 0.9
run scl-coupled --recipe recipes/lenet5caffe-scl-structured.toml
run dessilbi-lenet5 --recipe recipes/lenet5-dessilbi.toml
rm -f "$OUT"/*/checkpoint.pt "$OUT"/*/model.pt "$OUT"/*/init.pt
