#!/usr/bin/env bash
# Ablation on ETTh1-96, scored on the VALIDATION split (--eval_split val), so that no choice
# of defaults looks at test data. Every row is the quickstart configuration (reduced CPU
# protocol) with one change; 30 samples, 10 ancestral steps.
#   bash scripts/ablation.sh            # all rows (about an hour on a 2-core CPU)
#   bash scripts/ablation.sh ema lambda02   # only these rows
# Outputs go to ./ablation/ (git-ignored); the table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
out=./ablation
declare -A rows=(
  [default]=""
  [ema]="--ema_decay 0.999"
  [lambda02]="--loss_lambda 0.2"
  [lambda08]="--loss_lambda 0.8"
  [linear]="--beta_schedule linear"
  [unet_x2]="--unet_channels 32,64,128 --cond_dim 128"
  [eps]="--parameterization eps --clip_x0 3"
  [x0]="--parameterization x0"
  [direct]="--model iTransformerDiffusionDirect"
  [direct_clip5]="--model iTransformerDiffusionDirect --clip_x0 5"
  [direct_noclip]="--model iTransformerDiffusionDirect --clip_x0 0"
  [uncentred]="--center_samples 0"
  [stage2_30]="--stage2_epochs 30"
  [stage2_lr3]="--stage2_lr 3e-4"
)
order=(default ema lambda02 unet_x2 linear lambda08 eps x0 direct direct_clip5
       direct_noclip uncentred stage2_30 stage2_lr3)
selected=("$@")
[[ ${#selected[@]} -eq 0 ]] && selected=("${order[@]}")
for name in "${selected[@]}"; do
  # shellcheck disable=SC2086
  python -u run.py --task_name diffusion_forecast --is_training 1 --model iTransformerDiffusion \
    --data ETTh1 --root_path ./dataset/ETT-small/ --data_path ETTh1.csv --features M \
    --seq_len 96 --label_len 48 --pred_len 96 --e_layers 2 --d_model 128 --d_ff 128 \
    --n_heads 8 --unet_channels 16,32,64 --cond_dim 64 --stage1_epochs 10 --stage2_epochs 10 \
    --patience 3 --batch_size 64 --num_workers 0 --n_samples 30 --sampler ddpm \
    --sampling_steps 10 --eval_split val --model_id "ablation_${name}" --des Ablation \
    --checkpoints "$out/checkpoints" --results "$out/results" --test_results "$out/test_results" \
    --result_file "$out/result_ablation.txt" ${rows[$name]}
  if [[ "$name" == default ]]; then  # the same checkpoint, other spread calibrations
    for calib in none global; do
      python -u run.py --task_name diffusion_forecast --is_training 0 --model iTransformerDiffusion \
        --data ETTh1 --root_path ./dataset/ETT-small/ --data_path ETTh1.csv --features M \
        --seq_len 96 --label_len 48 --pred_len 96 --e_layers 2 --d_model 128 --d_ff 128 \
        --n_heads 8 --unet_channels 16,32,64 --cond_dim 64 --batch_size 64 --num_workers 0 \
        --n_samples 30 --sampler ddpm --sampling_steps 10 --eval_split val \
        --model_id ablation_default --des Ablation --calibrate_spread "$calib" \
        --checkpoints "$out/checkpoints" --results "$out/results_calib_$calib" \
        --test_results "$out/test_results_calib_$calib" --result_file "$out/result_ablation.txt"
    done
  fi
done
python -m utils.summarize "$out/results"
