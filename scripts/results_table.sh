#!/usr/bin/env bash
# The README's results table: both diffusion models (and, in every run, both baselines) on
# ETTh1, ETTh2, ETTm1, ETTm2, Weather, Exchange at horizon 96 and ILI at 24, then one table
# from utils.summarize.
#   bash scripts/results_table.sh          # full protocol (GPU): the design's sizes, 100 samples, DDIM 50
#   bash scripts/results_table.sh --cpu    # reduced CPU protocol: the quickstart's sizes, 50 samples, DDPM 10
# Subsets: MODELS="iTransformerDiffusion" DATASETS="ETTh1 ETTh2" bash scripts/results_table.sh --cpu
# (names as in the first column of `runs` below; weather, exchange_rate, national_illness for
# the custom ones). Outputs go to ./results_table/ (git-ignored); runs already there are redone.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--cpu" ]]; then
  shift
  size=(--d_model 128 --d_ff 128 --unet_channels 16,32,64 --cond_dim 64
        --stage1_epochs 10 --stage2_epochs 10 --batch_size 64 --num_workers 0
        --n_samples 50 --sampler ddpm --sampling_steps 10 --des CPU)
else
  size=(--d_model 128 --d_ff 128 --stage1_epochs 30 --stage2_epochs 20 --batch_size 32
        --n_samples 100 --sampler ddim --sampling_steps 50 --des Full)
fi
out=./results_table
runs=(
  "ETTh1 ./dataset/ETT-small/ ETTh1.csv 96 48 96"
  "ETTh2 ./dataset/ETT-small/ ETTh2.csv 96 48 96"
  "ETTm1 ./dataset/ETT-small/ ETTm1.csv 96 48 96"
  "ETTm2 ./dataset/ETT-small/ ETTm2.csv 96 48 96"
  "custom ./dataset/weather/ weather.csv 96 48 96"
  "custom ./dataset/exchange_rate/ exchange_rate.csv 96 48 96"
  "custom ./dataset/illness/ national_illness.csv 36 18 24"
)
models=${MODELS:-iTransformerDiffusion iTransformerDiffusionDirect}
for model in $models; do
  for spec in "${runs[@]}"; do
    read -r data root file seq label horizon <<< "$spec"
    name=${file%.csv}
    if [[ -n "${DATASETS:-}" && " $DATASETS " != *" $name "* ]]; then continue; fi
    python -u run.py --task_name diffusion_forecast --is_training 1 --model "$model" \
      --data "$data" --root_path "$root" --data_path "$file" --features M \
      --seq_len "$seq" --label_len "$label" --pred_len "$horizon" \
      --model_id "${file%.csv}_${seq}_${horizon}" "${size[@]}" \
      --checkpoints "$out/checkpoints" --results "$out/results" \
      --test_results "$out/test_results" --result_file "$out/result_diffusion_forecast.txt" "$@"
  done
done
python -m utils.summarize "$out/results" --baselines --sort data \
  --columns model,data,horizon,samples,MSE,MAE,CRPS,CRPS_norm,cov50,cov90,sharp90
