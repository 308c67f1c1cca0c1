"""`anima serve`: an A1111-compatible HTTP API, a persistent job queue and a web UI.

Layout (InvokeAI-style service layer: routes stay thin, state lives in services):

- `schemas`      pydantic request/response models (the OpenAPI document is generated from them)
- `a1111`        A1111 request -> anima job spec (sampler labels, seeds, ignored-field notes)
- `security`     limits, name resolution inside configured folders, API-key auth
- `service`      the generation service: model catalog + a swappable `Pipeline` runner
- `jobs`         SQLite job store, the single worker thread, progress state and events
- `routes_a1111`, `routes_native`  the HTTP endpoints
- `app`          `create_app(...)`: wires the above into a FastAPI app

Importing this package imports nothing heavy; fastapi is needed only by `app` and the routes.
"""
