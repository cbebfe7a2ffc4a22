#!/usr/bin/env bash
# iTransformer on ETTm1.csv: the official iTransformer settings (lr 1e-4, batch 32,
# 10 epochs, patience 3, type1 schedule are run.py's defaults). Run from the repository root.
# Extra arguments are passed through, e.g. --train_epochs 1 --checkpoints /tmp/ck
set -euo pipefail
cd "$(dirname "$0")/../../.."

model_name=iTransformer

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/ETT-small/ \
  --data_path ETTm1.csv \
  --model_id ETTm1_96_96 \
  --model $model_name \
  --data ETTm1 \
  --features M \
  --seq_len 96 \
  --label_len 48 \
  --pred_len 96 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/ETT-small/ \
  --data_path ETTm1.csv \
  --model_id ETTm1_96_192 \
  --model $model_name \
  --data ETTm1 \
  --features M \
  --seq_len 96 \
  --label_len 48 \
  --pred_len 192 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/ETT-small/ \
  --data_path ETTm1.csv \
  --model_id ETTm1_96_336 \
  --model $model_name \
  --data ETTm1 \
  --features M \
  --seq_len 96 \
  --label_len 48 \
  --pred_len 336 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"

python -u run.py \
  --task_name long_term_forecast \
  --is_training 1 \
  --root_path ./dataset/ETT-small/ \
  --data_path ETTm1.csv \
  --model_id ETTm1_96_720 \
  --model $model_name \
  --data ETTm1 \
  --features M \
  --seq_len 96 \
  --label_len 48 \
  --pred_len 720 \
  --e_layers 2 \
  --des 'Exp' \
  --d_model 128 \
  --d_ff 128 \
  --itr 1 "$@"
