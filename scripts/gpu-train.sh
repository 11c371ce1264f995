#!/usr/bin/env bash
# The GPU runs behind the published GPU-trained models and GPU benchmarks (docs/TRAINING.md,
# docs/BENCHMARKS.md), in two sittings of under ten minutes each on one GPU:
#
#   scripts/gpu-train.sh isp OUT      # ISP throughput on the GPU (two batch sizes)
#   scripts/gpu-train.sh stage1 OUT   # `gpu` Stage I (490 s budget) beside the whole `paper` config
#                                     # (Stage I 240 s + Stage II 220 s budgets)
#   scripts/gpu-train.sh stage2 OUT   # `gpu` Stage II and the three ablations side by side (430 s budgets,
#                                     # 3 batch workers each, from runs/gpu/stage1.pt); serving-graph
#                                     # throughput per precision
#   scripts/gpu-train.sh continue OUT # the ISP alone at 64 x 512^2 (the 1 GP/s target), then two Stage II
#                                     # runs side by side from the shipped entry (no run folder needed:
#                                     # --init-from model_store/dir-restore/<highest>, $BUDGET s, 450 by
#                                     # default): `gpu` continued, and `gpu` with a fresh A twice as wide
#   scripts/gpu-train.sh mixed OUT    # the ISP at 64 x 512^2, then two Stage II runs side by side from the
#                                     # shipped entry, $BUDGET s each (300 by default): the `mixed` config
#                                     # (train+ablation+lowlight) and the same on ablation+lowlight alone
#   scripts/gpu-train.sh quality OUT  # issue 20's sitting, side by side from the shipped entry, $BUDGET s
#                                     # each (450 by default): the gated denoise stage (`denoise-gpu`,
#                                     # continuing the entry's denoiser and gate) and Stage II with A v2
#                                     # (`align-v2-gpu`, a fresh A of width 128 on the entry's frozen Stage I);
#                                     # both on BSDS500 + COCO128 train images (copy both folders into the
#                                     # carried data root, DIR_DATA_ROOT)
#
# Runs concurrently on one GPU (the small networks leave it mostly idle); each process fits its stage into
# its --time-limit and records the steps it ran. Weights come back under OUT without optimiser state
# (`paper` in fp16) so they fit the transfer limits of the machine they ran on.
set -u
phase=${1:?usage: scripts/gpu-train.sh isp|stage1|stage2|continue|mixed|quality OUT}
out=${2:?usage: scripts/gpu-train.sh isp|stage1|stage2|continue|mixed|quality OUT}
mkdir -p "$out" runs
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3
py=${PYTHON:-python3}
train() { "$py" -m training.cli "$@" --no-progress; }

strip() {  # strip SRC DST DTYPE: keep weights, step counts and configs; drop optimiser state
  "$py" - "$@" <<'PY'
import sys, torch
src, dst, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
ckpt = torch.load(src, map_location="cpu", weights_only=True)
ckpt.pop("optimizer", None)
ckpt["rng"] = {}
ckpt["modules"] = {n: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
                   for n, sd in ckpt["modules"].items()}
torch.save(ckpt, dst)
PY
}

isp_64x512() {  # the ISP alone at 64 x 512^2 (the 1 GP/s target), before any training starts
  "$py" benchmarks/isp_throughput.py --device "${ISP_DEVICE:-cuda}" --json --no-write --repeats 3 --batch 64 \
    --size 512 > "$out/isp_cuda_64x512.json" 2> "$out/isp_cuda_64x512.err"
}

finish_pair() {  # finish_pair A B: bring back runs/gpu-A and runs/gpu-B (Stage II weights) and the logs
  for r in "$@"; do
    strip "runs/gpu-$r/stage2.pt" "$out/gpu-$r-stage2.pt" float32
  done
  tar czf "$out/logs.tar.gz" runs/*.log runs/gpu-*/metrics-*.jsonl runs/gpu-*/config.yaml
}

entry=$(ls -d model_store/dir-restore/*/ | sort -V | tail -n 1)
if [ "$phase" = continue ] || [ "$phase" = mixed ] || [ "$phase" = quality ]; then
  # --init-from reads a model_store entry, whose manifest reader needs pydantic (not on every GPU image).
  "$py" -c "import pydantic, pydantic_core" 2>/dev/null || {
    echo "phase $phase needs pydantic and pydantic_core (install the wheels first, e.g. pip --target)" >&2
    exit 2
  }
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())"
  nproc; df -h /dev/shm; } > "$out/env.txt" 2>&1

if [ "$phase" = isp ]; then
  { "$py" benchmarks/isp_throughput.py --device cuda --json --no-write --repeats 5
    "$py" benchmarks/isp_throughput.py --device cuda --json --no-write --repeats 3 --batch 32 --size 512
  } > "$out/isp_cuda.json" 2> "$out/isp_cuda.err"
elif [ "$phase" = stage1 ]; then
  { train stage1 --config gpu --run-dir runs/gpu --time-limit 490 \
      || train stage1 --config gpu --run-dir runs/gpu --time-limit 420 --workers 0; } > runs/gpu-stage1.log 2>&1 &
  { train stage1 --config paper --run-dir runs/paper --time-limit 240 \
      && train stage2 --config paper --run-dir runs/paper --time-limit 220; } > runs/paper.log 2>&1 &
  wait
  strip runs/gpu/stage1.pt "$out/gpu-stage1.pt" float32
  strip runs/paper/stage2.pt runs/paper-stage2.fp16.pt float16 && split -b 15M -d runs/paper-stage2.fp16.pt "$out/paper-stage2.fp16.pt."
  tar czf "$out/logs.tar.gz" runs/*.log runs/*/metrics-*.jsonl runs/*/config.yaml
elif [ "$phase" = stage2 ]; then
  [ -f runs/gpu/stage1.pt ] || { echo "stage2 needs runs/gpu/stage1.pt (from the stage1 phase)" >&2; exit 2; }
  train stage2 --config gpu --run-dir runs/gpu --time-limit 430 --workers 3 > runs/gpu-stage2.log 2>&1 &
  for v in no_pilot r0_only autoencoder; do
    train ablation --config gpu --run-dir runs/gpu --variant "$v" --time-limit 430 --workers 3 \
      > "runs/gpu-$v.log" 2>&1 &
  done
  wait
  for f in stage2 ablation-no_pilot ablation-r0_only ablation-autoencoder; do
    strip "runs/gpu/$f.pt" "$out/gpu-$f.pt" float32
  done
  for c in gpu paper; do
    "$py" benchmarks/model_throughput.py --config "$c" --device cuda --batch 8 --tile 256
  done > "$out/model_cuda.json" 2> "$out/model_cuda.err"
  tar czf "$out/logs.tar.gz" runs/*.log runs/gpu/metrics-*.jsonl runs/gpu/config.yaml
elif [ "$phase" = continue ]; then
  budget=${BUDGET:-450}
  isp_64x512
  sed -e 's/^name: gpu$/name: gpu-wide-align/' -e 's/^  align_width: 64$/  align_width: 128/' \
    training/configs/gpu.yaml > runs/gpu-wide-align.yaml
  train stage2 --config gpu --run-dir runs/gpu-continue --init-from "$entry" --time-limit "$budget" \
    --workers 7 > runs/gpu-continue.log 2>&1 &
  train stage2 --config runs/gpu-wide-align.yaml --run-dir runs/gpu-wide-align --init-from "$entry" \
    --time-limit "$budget" --workers 7 > runs/gpu-wide-align.log 2>&1 &
  wait
  finish_pair continue wide-align
elif [ "$phase" = mixed ]; then
  budget=${BUDGET:-300}
  isp_64x512
  sed -e 's/^name: mixed$/name: mixed-eval/' -e 's/^  preset: train+ablation+lowlight$/  preset: ablation+lowlight/' \
    training/configs/mixed.yaml > runs/mixed-eval.yaml
  train stage2 --config mixed --run-dir runs/gpu-mixed --init-from "$entry" --time-limit "$budget" \
    > runs/gpu-mixed.log 2>&1 &
  train stage2 --config runs/mixed-eval.yaml --run-dir runs/gpu-mixed-eval --init-from "$entry" \
    --time-limit "$budget" > runs/gpu-mixed-eval.log 2>&1 &
  wait
  finish_pair mixed mixed-eval
elif [ "$phase" = quality ]; then
  budget=${BUDGET:-450}
  train denoise --config denoise-gpu --run-dir runs/gpu-denoise --init-from "$entry" --time-limit "$budget" \
    > runs/gpu-denoise.log 2>&1 &
  train stage2 --config align-v2-gpu --run-dir runs/gpu-align-v2 --init-from "$entry" --time-limit "$budget" \
    > runs/gpu-align-v2.log 2>&1 &
  wait
  strip runs/gpu-denoise/denoise.pt "$out/gpu-denoise.pt" float32
  # A v2 makes the full system about 22 MB in float32: it comes back in float16 pieces under 16 MB.
  strip runs/gpu-align-v2/stage2.pt runs/gpu-align-v2.fp16.pt float16 \
    && split -b 15M -d runs/gpu-align-v2.fp16.pt "$out/gpu-align-v2-stage2.fp16.pt."
  tar czf "$out/logs.tar.gz" runs/*.log runs/gpu-*/metrics-*.jsonl runs/gpu-*/config.yaml
else
  echo "unknown phase $phase" >&2
  exit 2
fi
ls -la "$out"
tail -n 3 runs/*.log
