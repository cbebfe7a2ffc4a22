#!/usr/bin/env bash
# iTransformerDiffusion on traffic.csv, four horizons, the full (GPU) protocol:
# d_model 128, e_layers 2, T = 1000 cosine, 30 + 20 epochs, 100 samples, batch 32.
# Sized for a GPU. Run from anywhere; extra arguments are passed through to run.py,
# e.g. --sampler dpm_solver --sampling_steps 20, or --is_training 0 to re-evaluate.
# traffic.csv is not shipped (see dataset/README.md): place it under ./dataset/traffic/ first.
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/traffic/ \
  --data_path traffic.csv \
  --model_id traffic_96_96 \
  --model iTransformerDiffusion \
  --data custom \
  --features M \
  --seq_len 96 --label_len 48 --pred_len 96 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/traffic/ \
  --data_path traffic.csv \
  --model_id traffic_96_192 \
  --model iTransformerDiffusion \
  --data custom \
  --features M \
  --seq_len 96 --label_len 48 --pred_len 192 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/traffic/ \
  --data_path traffic.csv \
  --model_id traffic_96_336 \
  --model iTransformerDiffusion \
  --data custom \
  --features M \
  --seq_len 96 --label_len 48 --pred_len 336 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/traffic/ \
  --data_path traffic.csv \
  --model_id traffic_96_720 \
  --model iTransformerDiffusion \
  --data custom \
  --features M \
  --seq_len 96 --label_len 48 --pred_len 720 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"
