#!/usr/bin/env bash
# iTransformer on national_illness.csv: the official iTransformer settings (lr 1e-4, batch 32,
# ILI is not in the iTransformer paper: TSLib's ILI protocol (lookback 36, horizons 24-60).
# 10 epochs, patience 3, type1 schedule are run.py's defaults). Run from the repository root.
# Extra arguments are passed through, e.g. --train_epochs 1 --checkpoints /tmp/ck
set -euo pipefail
cd "$(dirname "$0")/../../.."

model_name=iTransformer

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_24 \
  --model $model_name \
  --data custom \
  --features M \
  --seq_len 36 \
  --label_len 18 \
  --pred_len 24 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_36 \
  --model $model_name \
  --data custom \
  --features M \
  --seq_len 36 \
  --label_len 18 \
  --pred_len 36 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_48 \
  --model $model_name \
  --data custom \
  --features M \
  --seq_len 36 \
  --label_len 18 \
  --pred_len 48 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/illness/ \
  --data_path national_illness.csv \
  --model_id ili_36_60 \
  --model $model_name \
  --data custom \
  --features M \
  --seq_len 36 \
  --label_len 18 \
  --pred_len 60 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"
