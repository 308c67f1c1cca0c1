"""ComfyUI graphs: reading the API and UI formats, resolving them to recipes, writing them back.

- `graph`: the API-format graph (nodes, links) and its checks; `ui`: a UI workflow flattened as the
  frontend queues it (subgraphs, bypass / mute, reroutes, primitive nodes); `read`: where graphs
  come from (PNG chunks, files, request bodies);
- `evaluate` + `node_rules` + `values`: the graph evaluated lazily into descriptions of what each
  node computes; `plan`: an output node's description -> an anima `Recipe` (one line when it cannot);
- `write`: a recipe -> the graph of ComfyUI core nodes that makes the same image.

No torch here: files are found and run above the pipeline (`anima.jobs.comfy_graph`).
`node_defs.json` holds the input and output layout of the core nodes anima reads and writes, as
ComfyUI declares them at the fixtures' commit (its "provenance" entry says how it was taken).
"""
