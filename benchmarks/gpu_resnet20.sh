#!/usr/bin/env bash
# The ResNet-20 / Fashion-MNIST FLOPs protocol (benchmarks/resnet20_flops.py, issue 13
# point 3) on the lent GPU, run from the repository root. The whole protocol (3 seeds x
# 3 budgets x 5 methods, 30 epochs each on the whole training set, and 3 dense models) is
# longer than one device command (10 min) and one session's device time (15 min), so it
# runs in pieces: each call extracts the finished runs an earlier call sent back
# (.results/resnet20-flops.tar.gz, carried), goes on with the next runs until --stop-after,
# and sends everything finished back as $OUT/resnet20-flops.tar.gz (plus summary.md and the
# log). Unpack that tarball into .results/ here (and into benchmarks/results/resnet20-flops/
# for the tables) before the next call.
#
# Prepare once, here, in the repository root (none of it is in git):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   echo /.results/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl torch-pruning==1.6.0
#   mkdir -p .data/fashion-mnist .results
#   cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
# Then through the device tool (carry .whl, .data and .results; its timeout_s above LIMIT):
#   run(command="bash benchmarks/gpu_resnet20.sh", carry=[".whl", ".data", ".results"],
#       timeout_s=600)
# Arguments after the script go to resnet20_flops.py (e.g. --seeds 0 to do one seed first).
# LIMIT (seconds, default 540) stops the Python process for sure; STOP (minutes, default 7)
# is its --stop-after, so the tarball is written inside the command's time.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-resnet20}
LIMIT=${LIMIT:-540}
STOP=${STOP:-7}
RESULTS=/tmp/resnet20-flops
mkdir -p "$OUT" "$RESULTS"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LEARNPRUNE_DATA=$PWD/.data PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist && cp .data/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
if [ -f .results/resnet20-flops.tar.gz ]; then  # the runs earlier calls finished
    tar -xzf .results/resnet20-flops.tar.gz -C "$RESULTS" || exit 1
fi
python3 -c "import torch, torch_pruning, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torch-pruning', torch_pruning.__version__, torch.cuda.get_device_name(0))"

timeout "$LIMIT" python3 benchmarks/resnet20_flops.py --device cuda --out "$RESULTS" \
    --stop-after "$STOP" "$@" 2>&1 | tee "$OUT/resnet20-flops.log"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ]; then  # stopped inside a run: the tables of what is finished
    python3 benchmarks/resnet20_flops.py --out "$RESULTS" --summarise "$@" >/dev/null 2>&1
fi
# finished runs and the dense weights, not the killed run's scratch directory
tar -czf "$OUT/resnet20-flops.tar.gz" -C "$RESULTS" --exclude='./.*.running' .
cp "$RESULTS/summary.md" "$OUT/" 2>/dev/null
echo "resnet20_flops.py exit status $status (0 all done, 1 a learned row off its FLOPs target, 3 runs left, 124 stopped by LIMIT)"
exit 0
