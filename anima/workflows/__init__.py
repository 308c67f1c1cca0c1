"""Per-image features on top of the core engine, one concept per module (their settings are the
recipe's groups, `anima.recipe.settings`; the pipeline runs them):

- `init_image`, `sources`: img2img inputs (loading, size policy, file digests, recorded paths).
- `inpaint`: masks (grow, blur), latent-noise-mask denoising, pixel composite, "only masked" crops.
- `nag`: normalized attention guidance on the DiT cross-attention (scoped module wrappers).
- `variations`: variation seeds (slerp of initial noise).
- `hires`: multi-pass upscale planning and latent/pixel upscalers; `resample`: image resizing.
- `tiled_vae`: when to tile the VAE, tiled encode and decode.

Many images from one command (batches, grids, wildcards, prompt matrix) are `anima.jobs`.
"""
