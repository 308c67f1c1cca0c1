"""Image workflows built on the core engine, one concept per module.

- `settings`: the typed view of the workflow options stored in ``Recipe.extra`` (what a PNG records).
- `init_image`: img2img inputs (loading, size policy, Lanczos resize, file digests).
- `inpaint`: masks (grow, blur), latent-noise-mask denoising, pixel composite, "only masked" crops.
- `prompt_editing`: ``[a:b:0.4]``, ``[a:0.3]``, ``[a::0.6]``, ``[a|b]`` -> one prompt per step.
- `denoiser`: per-step conditioning + guidance + NAG -> the ``denoise(x, sigma)`` samplers call.
- `nag`: normalized attention guidance on the DiT cross-attention (scoped module wrappers).
- `variations`: variation seeds (slerp of initial noise).
- `hires`: multi-pass upscale planning and latent/pixel upscalers.
- `tiled_vae`: when to tile the VAE, tiled encode and decode.
- `batches`, `wildcards`, `prompt_matrix`, `grid`: many images from one command.
- `flags`: the ``anima generate`` flags that set all of the above.

Importing this package does nothing heavy; torch is imported by the modules that compute.
"""
