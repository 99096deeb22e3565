"""The metered gateway: an OpenAI-compatible HTTP server for a model polydistill produced.

`polydistill serve MODEL_DIR` runs it; `polydistill keys ...` manages API keys and
`polydistill usage ...` exports the usage ledger. Modules, outside in:

- `commands`: the typer commands; `assemble`: builds a gateway from their options; `server`:
  runs the API and admin apps under uvicorn.
- `app`: the app factory and its routes; `auth`: bearer keys with a short cache; `completions`,
  `chat`: request validation and wire format of the two generation routes; `limits`: caps and
  context checks; `pipeline`: admission, generation and billing of one request (streamed or
  not); `generation`: running a request's sequences; `protocol`: request and response schemas;
  `errors`: OpenAI-shaped errors; `middleware`: request ids, body size limit, metrics;
  `fast_path`: well-formed generation requests answered without FastAPI's layers (the rest
  go to the routes).
- `engine`: the engine protocol; `local_engine` (in-process transformers, batching worker),
  `upstream_engine` (a vLLM-compatible server), `fixed_engine` (instant output, for overhead
  measurements); `sampling`, `detokenize`: per-token helpers; `checkpoint`: tokenizer and limits
  read from the model directory.
- `metering`: reserve, settle and release around each request; `ledger`: the SQL behind it;
  `batching`: group commit of those writes (on the event loop for SQLite, one thread for
  PostgreSQL);
  `accounts`: keys and the audit log; `keys`: key material and the server secret; `storage`:
  tables and connections; `money`: integer micro-dollars; `settings`: prices, caps and limits;
  `lineage`: the model's teachers as shown by `/v1/models`; `metrics`: Prometheus counters for
  the admin port; `usage_export`: the ledger as CloudEvents or CSV; `timeutil`: times in ms.
"""
