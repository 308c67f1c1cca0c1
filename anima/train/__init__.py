"""Training: LoRA / LoKr / full fine-tuning of Anima models with the rectified-flow objective.

- `config`: the frozen `TrainConfig` (TOML file + command-line flags).
- `data`: dataset folder scan, aspect buckets, caption processing, the resumable batch order.
- `cache`: on-disk latent and text-encoder caches and their invalidation rules.
- `objective`: timestep sampling and the velocity loss (spec 2.8).
- `forward`: the DiT forward used for training (exact, cheaper on padded contexts; checkpointing).
- `checkpoint`: resumable training state (atomic writes).
- `trainer`: the loop (precision, accumulation, EMA, samples, logs, checkpoints, data parallel).

Nothing here is imported by the inference code.
"""
