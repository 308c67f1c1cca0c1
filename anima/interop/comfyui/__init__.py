"""ComfyUI graphs: reading the API and UI formats, resolving them to recipes, writing them back.

`node_defs.json` holds the input and output layout of the core nodes anima reads and writes, as
ComfyUI declares them at the fixtures' commit (its "provenance" entry says how it was taken).
"""
