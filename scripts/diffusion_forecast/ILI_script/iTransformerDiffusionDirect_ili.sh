#!/usr/bin/env bash
# iTransformerDiffusionDirect on national_illness.csv, four horizons, the full (GPU) protocol:
# d_model 128, e_layers 2, T = 1000 cosine, 30 + 20 epochs, 100 samples, batch 32.
# Sized for a GPU. Run from anywhere; extra arguments are passed through to run.py,
# e.g. --sampler dpm_solver --sampling_steps 20, or --is_training 0 to re-evaluate.
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_24 \
  --model iTransformerDiffusionDirect \
  --data custom \
  --features M \
  --seq_len 36 --label_len 18 --pred_len 24 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_36 \
  --model iTransformerDiffusionDirect \
  --data custom \
  --features M \
  --seq_len 36 --label_len 18 --pred_len 36 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_48 \
  --model iTransformerDiffusionDirect \
  --data custom \
  --features M \
  --seq_len 36 --label_len 18 --pred_len 48 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_60 \
  --model iTransformerDiffusionDirect \
  --data custom \
  --features M \
  --seq_len 36 --label_len 18 --pred_len 60 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --diffusion_steps 1000 --beta_schedule cosine \
  --stage1_epochs 30 --stage2_epochs 20 \
  --n_samples 100 --batch_size 32 \
  --des 'Exp' --itr 1 "$@"
