#!/usr/bin/env bash
# 在借到的 GPU 机器上跑一次（仓库根目录）：矩阵乘峰值 → base 预设训练吞吐（compile + bf16 + fused AdamW）
# 与同尺寸的 transformers Llama 对比 → 生成速度。结果写到 $OUT（设备工具会取回）或 bench/results。
# Run once on a lent GPU, from the repo root:  bash bench/gpu.sh
set -euo pipefail
OUT_DIR=${OUT:-bench/results}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # 不必 pip install：GPU 镜像里已有 torch / transformers
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu_info.txt"
$PY bench/matmul_peak.py --out "$OUT_DIR/matmul_peak.json"
PEAK=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['result']['bf16_tflops'])" "$OUT_DIR/matmul_peak.json")

# base 预设：12 层、768 宽、12 头 / 4 组键值、SwiGLU 2944、词表 32000、序列 1024
$PY bench/train_throughput.py --preset base --vocab 32000 --seq 1024 --batch 16 --dtypes bf16 --compile \
    --warmup 5 --steps 10 --rounds 3 --peak-tflops "$PEAK" --out "$OUT_DIR/gpu_train_throughput.json" \
    2>&1 | tee "$OUT_DIR/gpu_train_throughput.txt"
