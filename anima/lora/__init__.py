"""LoRA, LoKr and LoHa for Anima: read every common file format, apply at runtime or merged, convert.

Modules (import what you need; this package imports nothing on its own so that prompt parsing
stays torch-free):

- `anima.lora.targets`: the adaptable layers (`Target`) and their name grammar;
- `anima.lora.keys`: file key conventions of sd-scripts, ComfyUI, diffusion-pipe and diffusers;
- `anima.lora.modules`: the maths (`LoRA`, `LoKr`, `LoHa` adapters);
- `anima.lora.file`: `load_lora`, `save_lora`, `state_dict_for`;
- `anima.lora.apply`: `apply_loras` (runtime wrapping or merge; exact removal);
- `anima.lora.network`: `LoRANetwork`, trainable adapters for the trainer;
- `anima.lora.prompt`: ``--lora name:0.8`` and ``<lora:name:0.8>`` parsing;
- `anima.lora.use`: the pipeline hook `applied_loras`;
- `anima.lora.info`: `anima lora info` / `anima lora convert`.
"""
