#!/usr/bin/env bash
# Issue 17's GPU measurements in one prepared run: about 8 minutes on an H100/H200, every section capped
# by `timeout`, its JSON/log written to $OUT as soon as it ends (a section that runs out of time loses
# only itself). Run from the repository root on the device machine, deepxde and hydra-core carried as
# wheels (see the device README):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash benchmarks/device_issue17.sh
#
# Sections (what each answers, issue 17's goal in brackets):
#   test_cuda     tests/test_cuda.py: graph = eager on the device for every captured method, default ODELoRA
#                 (Newton–Schulz rebalance) captured, the flattened batch = separate runs, checkpoints across
#                 devices (the CUDA paths never run on a GPU before)
#   gpu_step      eager vs graph, LoRA/ODELoRA/RK4 against DeepXDE at 2 000 and 8 192 points
#                 [LoRA <= 1 ms at 8 192; ODELoRA-Euler <= 1.25x LoRA with rebalance; >= 5x DeepXDE]
#   batch_step    K = 1/8/32/128 at 2 000 points, flattened and copy by copy [K = 32 <= 3x K = 1]
#   capture       every registered method's run with cuda_graph=auto: captured, or why not [all 18 captured]
#   time_to_acc   the defaults on the three default targets with device=cuda [<= 5 s to 1e-3 each]
set -u
OUT=${OUT:-/tmp/issue17_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c \
  "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
} > "$OUT/device.txt" 2>&1
section() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/sections.txt"
}
section test_cuda 100 python3 -m pytest -q -p no:xdist -p no:cacheprovider -o addopts="" tests/test_cuda.py
section gpu_step 130 python3 benchmarks/gpu_step.py --points 2000 8192 --steps 400 --out "$OUT/gpu_step.json"
section batch_step 80 python3 benchmarks/batch_step.py --ks 1 8 32 128 --points 2000 --steps 300 --both \
  --device cuda --out "$OUT/batch_step.json"
section capture 80 python3 benchmarks/capture_methods.py --device cuda --out "$OUT/capture_methods.json"
section time_to_acc 110 python3 benchmarks/time_to_accuracy.py --routes defaults --device cuda --cap 30 \
  --out "$OUT/time_to_accuracy.json"
