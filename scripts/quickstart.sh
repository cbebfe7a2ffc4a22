#!/usr/bin/env bash
# The README's main job: ETTh1 96→96, both training stages and a full test-set evaluation of
# iTransformerDiffusion, sized to finish on a 2-core CPU in a few minutes (see the README). It
# prints the model's and the baselines' scores side by side. Reduced CPU protocol:
# the standard data protocol and all 2785 test windows, but a smaller denoiser, fewer epochs,
# and 50 samples from ancestral sampling at 10 steps (the GPU scripts use 100 samples, DDIM 50).
# Extra arguments are passed through to run.py (e.g. --checkpoints /tmp/ck).
set -euo pipefail
cd "$(dirname "$0")/.."

python -u run.py \
  --task_name diffusion_forecast \
  --is_training 1 \
  --model iTransformerDiffusion \
  --data ETTh1 \
  --root_path ./dataset/ETT-small/ \
  --data_path ETTh1.csv \
  --model_id quickstart_96_96 \
  --features M \
  --seq_len 96 --label_len 48 --pred_len 96 \
  --e_layers 2 --d_model 128 --d_ff 128 --n_heads 8 \
  --unet_channels 16,32,64 --cond_dim 64 \
  --stage1_epochs 10 --stage2_epochs 10 --patience 3 \
  --batch_size 64 --num_workers 0 \
  --n_samples 50 --sampler ddpm --sampling_steps 10 \
  --des 'Quick' "$@"
