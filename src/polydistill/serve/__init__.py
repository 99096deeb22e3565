"""The metered gateway: an OpenAI-compatible HTTP server for a model polydistill produced.

`polydistill serve MODEL_DIR` runs it; `polydistill keys ...` manages API keys and
`polydistill usage ...` exports the usage ledger. Modules, outside in:

- `commands`: the typer commands; `server`: runs the API and admin apps under uvicorn.
- `app`: the app factory and its routes; `completions`, `chat`: the two generation routes;
  `streaming`: server-sent events; `protocol`: request and response schemas; `errors`:
  OpenAI-shaped errors; `middleware`: request ids, body size limit, metrics.
- `engine`: the engine protocol; `local_engine` (in-process transformers, batching worker),
  `upstream_engine` (a vLLM-compatible server), `fixed_engine` (instant output, for overhead
  measurements); `sampling`, `detokenize`: per-token helpers of the local engine.
- `metering`: reserve, settle and release around each request; `ledger`: the SQL behind it;
  `accounts`: keys and the audit log; `keys`: key material; `storage`: tables and connections;
  `money`: integer micro-dollars; `settings`: prices, caps and limits; `lineage`: the model's
  teachers as shown by `/v1/models`; `metrics`: Prometheus counters for the admin port.
"""
