#!/usr/bin/env bash
# The GPU path in one run on one NVIDIA GPU (about 8 minutes): the GPU build of TensorFlow,
# `python -m bench accuracy` on the embedded 0-5 photos with --use-gpu, at mixed_float16 (the
# default there) and float32, then `resnet-ray serve` of a model trained there, asked about a
# photo over HTTP. Results: $OUT/accuracy-DATE-gpu*.json, to copy into bench/results/.
#   OUT=/tmp/gpu-check bash bench/gpu_check.sh
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}; EPOCHS=${EPOCHS:-4}; VENV=${VENV:-/tmp/gpu-check-venv}
mkdir -p "$OUT" && exec > >(tee "$OUT/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -e . "tensorflow[and-cuda]==2.21.0"
export PATH="$VENV/bin:$PATH"
ray stop --force >/dev/null 2>&1 || true  # the layout line says whether a GPU was found
resnet-ray data sample --out "$OUT/signs" --classes 0,1,2,3,4,5
day=$(date +%F)
python -m bench accuracy --data "$OUT/signs" --epochs "$EPOCHS" \
  --out "$OUT/accuracy-$day-gpu.json" -- --use-gpu
python -m bench accuracy --data "$OUT/signs" --epochs "$EPOCHS" \
  --out "$OUT/accuracy-$day-gpu-float32.json" -- --use-gpu --precision float32
resnet-ray train --data "$OUT/signs" --use-gpu --epochs 1 --storage "$OUT/runs" \
  --name serve --export "$OUT/model"
resnet-ray serve "$OUT/model" --backend tf --port 8000 & server=$!
for _ in $(seq 120); do curl -sf localhost:8000/healthz >/dev/null && break; sleep 1; done
photo=$(ls resnet_ray/embedded/sign-digits/3/*.jpg | head -1)
curl -sf -F "file=@$photo" localhost:8000/predict | tee "$OUT/predict.json"
kill -INT "$server"; wait "$server" || true
