#!/usr/bin/env bash
# The GPU path in one run, under 8 minutes on one GPU: install the GPU build of TensorFlow,
# train the ResNet-50 on the embedded 0-5 photos with --use-gpu at float32 and at mixed
# precision (a few epochs each), print images/s for both, then serve the mixed-precision
# model and ask it about one held-out photo over HTTP.
#
#   bash bench/gpu_check.sh            # results in $OUT (default /tmp/gpu-check)
#
# Needs: Linux, Python 3.11, an NVIDIA GPU with its driver, PyPI.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
EPOCHS=${EPOCHS:-4}
VENV=${VENV:-/tmp/gpu-check-venv}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
started=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - started )) s)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
grep -m1 'model name' /proc/cpuinfo; nproc

step "install"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -e . "tensorflow[and-cuda]==2.21.0"
export PATH="$VENV/bin:$PATH"
python -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); \
print('TensorFlow', tf.__version__, 'GPUs:', gpus); assert gpus, 'TensorFlow sees no GPU'"

ray stop --force >/dev/null 2>&1 || true
for precision in float32 mixed_float16; do
  step "train --use-gpu --precision $precision, $EPOCHS epochs"
  resnet-ray train --data builtin:sign-digits --use-gpu --precision "$precision" \
    --epochs "$EPOCHS" --storage "$OUT/runs" --name "$precision" --export "$OUT/model-$precision"
done

step "images/s (median of epochs 2 and later, rank 0)"
python - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for precision in ("float32", "mixed_float16"):
    reports = [json.loads(line) for line in
               (out / "runs" / precision / "reports.jsonl").read_text().splitlines()]
    rank0 = {r["epoch"]: r for r in reports if r["rank"] == 0}
    steady = [rank0[e]["images_per_s"] for e in sorted(rank0) if e >= 2]
    rows[precision] = {"images_per_s": statistics.median(steady),
                       "precision": rank0[max(rank0)]["precision"],
                       "val_accuracy": rank0[max(rank0)]["val_accuracy"],
                       "workers": rank0[max(rank0)]["world_size"]}
    print(f"{precision}: {rows[precision]}")
ratio = rows["mixed_float16"]["images_per_s"] / rows["float32"]["images_per_s"]
print(f"mixed_float16 / float32: {ratio:.2f}x")
(out / "gpu_check.json").write_text(json.dumps(rows, indent=2) + "\n")
EOF

step "serve the mixed-precision model and ask it once"
python - "$OUT" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
from resnet_ray.data import load_signs
from resnet_ray.embedded import resolve
test = load_signs(Path(resolve("builtin:sign-digits")) / "test_signs.h5")
Image.fromarray(test.x[0]).save(Path(sys.argv[1]) / "photo.png")
print("photo of digit", int(test.y[0]))
EOF
resnet-ray serve "$OUT/model-mixed_float16" --backend tf --port 8000 &
server=$!
for _ in $(seq 120); do curl -sf localhost:8000/metadata >/dev/null && break; sleep 1; done
curl -sf -F "file=@$OUT/photo.png" localhost:8000/predict | tee "$OUT/predict.json"; echo
kill -INT "$server"; wait "$server" || true
step "done"
