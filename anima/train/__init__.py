"""Training: LoRA / LoKr / full fine-tuning of Anima models with the rectified-flow objective.

- `config`: the frozen `TrainConfig` (TOML file + command-line flags).
- `data`: dataset folder scan, aspect buckets, caption processing, the resumable batch order.
- `cache`: on-disk latent and text-encoder caches and their invalidation rules.
- `objective`: timestep sampling and the velocity loss (anima-spec §2.8).
- `forward`: the DiT forward used for training (exact, cheaper on padded contexts; checkpointing).
- `models`: loading the base model, the trainable weights (LoRA network or full), the result file.
- `ema`: the exponential moving average of the trained weights.
- `checkpoint`: resumable training state (atomic writes).
- `sampling`, `logs`: sample images and CSV / TensorBoard logs during training.
- `trainer`: the loop (precision, accumulation, EMA, samples, logs, checkpoints, data parallel).

Nothing here is imported by the inference code.
"""
