"""The metered gateway: an OpenAI-compatible HTTP server for models polydistill produced.

`polydistill serve MODEL_DIR` runs it; `polydistill keys ...` manages API keys and
`polydistill usage ...` exports the usage ledger. The layout follows vLLM's
`entrypoints/openai/`: a folder per route, what the routes share one level down.

- `commands`: the typer commands; `assemble`: builds a gateway from their options; `server`:
  runs the API and admin apps under uvicorn; `settings`: prices, caps and limits.
- `app`: the app factory (routers, lifespan, `/health`); `fast_path`: well-formed generation
  requests answered without FastAPI's layers (the rest go to the routers).
- `routes/<route>/`: `router.py` (the thin FastAPI router), `protocol.py` (its request and
  response schemas), `serving.py` (what it does): `completions`, `chat`, `models`,
  `tokenizer` (`/tokenize`, `/detokenize`, `/tokenizer_info`).
- `core/`: what the routes share. `gateway`: the `Gateway` and the key dependency;
  `generate`: validate, admit, run and bill one generation request (both ways in call it);
  `request_flow`: admission, generation and billing of one request (streamed or not);
  `wire`: shared schema parts; `api_errors`: OpenAI-shaped errors; `limits`: caps and
  context checks; `served_model`: tokenizer and limits read from the model directory;
  `served_lineage`: the model's verified lineage as `/v1/models` shows it; `middleware`:
  request ids, body size limit, metrics; `overhead`: the gateway's own time per request;
  `metrics`: Prometheus counters for the admin port.
- `engines/`: `base` (the engine protocol), `local` (in-process transformers, batching
  worker), `upstream` (a vLLM-compatible server), `fixed` (instant output, for overhead
  measurements); `generation`: running a request's sequences; `sampling`,
  `incremental_text`: per-token helpers.
- `metering/`: `meter` (reserve, settle and release around each request); `ledger`: the SQL
  behind it; `write_batching`: group commit of those writes (on the event loop for SQLite,
  one thread for PostgreSQL); `accounts`: keys and the audit log; `keys`: key material and the
  server secret; `auth`: bearer keys with a short cache; `storage`: tables and connections;
  `money`: integer micro-dollars; `usage_export`: the ledger as CloudEvents or CSV;
  `timeutil`: times in ms.

`serve` imports nothing of polydistill outside itself but `errors` and `lineage`.
"""
