"""What a store was captured from: the plan every capture worker shares, and its comparisons.

    plan = capture_plan(teachers, prompts, top_k=64, temperature=1.0, samples=1,
                        max_new_tokens=16, seed=0, block_size=256)
    check_same_plan(store_dir, stored_plan, plan)        # UserError naming the first difference
    check_fingerprint("qwen", stored, configured)        # UserError naming the differing field

A plan holds the prompt set's hash and size, the generation and scoring settings, the block size
and, per teacher in capture order, its `fingerprint()` (weights hash or served model id,
tokenizer and chat template hashes), vocabulary size and stored k. `plan.json` is written when a
capture starts; `manifest.json` (the plan plus every shard's file, sha256 and counts) only once
every block is there, so a store with a manifest is complete.
"""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from polydistill.chat import Prompt, prompt_key
from polydistill.errors import UserError
from polydistill.store import codec
from polydistill.teachers.protocol import Teacher

FORMAT = 1
PLAN_FILE, MANIFEST_FILE = "plan.json", "manifest.json"
FIELD_WORDS = {
    "weights": "weights hash",
    "tokenizer": "tokenizer hash",
    "chat_template": "chat template hash",
    "model": "served model id",
    "root": "served model root",
    "revision": "model revision",
    "source": "source",
}
SETTINGS = ("top_k", "temperature", "samples", "max_new_tokens", "seed", "block_size")


def prompts_hash(prompts: Sequence[Prompt]) -> str:
    """sha256 of the JSON list of the prompts' keys (`chat.prompt_key`, each prompt whole),
    hashed a prompt at a time (never one string of every prompt)."""
    digest = hashlib.sha256(b"[")
    for i, prompt in enumerate(prompts):
        digest.update(((", " if i else "") + json.dumps(prompt_key(prompt))).encode("utf-8"))
    digest.update(b"]")
    return digest.hexdigest()


def block_seed(seed: int, block: int) -> int:
    """Sampling seed of one block: distinct per block, so blocks draw independent samples."""
    return seed * 1_000_003 + block


def capture_plan(
    teachers: Sequence[Teacher],
    prompts: Sequence[Prompt],
    *,
    top_k: int,
    temperature: float,
    samples: int,
    max_new_tokens: int,
    seed: int,
    block_size: int,
    policy: str | None = None,
) -> dict:
    for t in teachers:
        if "/" in t.name or not t.name:
            raise UserError(f"capture: teacher name {t.name!r} cannot name store columns")
    return {
        "format": FORMAT,
        "prompts": {"count": len(prompts), "sha256": prompts_hash(prompts)},
        "top_k": top_k,
        "temperature": float(temperature),
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "block_size": block_size,
        "blocks": -(-len(prompts) // block_size),
        # the digest of the teacher policy the capture ran under (`lineage.policy`), or None
        "policy": policy,
        "teachers": {
            t.name: {
                "fingerprint": t.fingerprint(),
                "vocab_size": len(t.tokenizer),
                "k": min(top_k, len(t.tokenizer)),
            }
            for t in teachers
        },
        "codec": {
            "logprobs": f"uint8 codes over {len(codec.LEVELS)} levels (sqrt-probability "
            f"spaced over {codec.FINE_SPAN} nats, then {codec.COARSE_STEP}-nat steps), "
            "row shift float32",
            "ids": "byte planes, zstd",
        },
    }


def short(value: object) -> str:
    text = str(value)
    return text[:12] + ".." if len(text) > 14 else text


def _ordered(fields: set[str]) -> list[str]:
    first = [f for f in ("tokenizer", "chat_template") if f in fields]
    return first + sorted(fields - set(first))


def check_fingerprint(name: str, stored: dict, expected: dict) -> None:
    """The stored teacher is the configured one: every fingerprint field equal."""
    for field in _ordered(set(stored) | set(expected)):
        ours, theirs = stored.get(field), expected.get(field)
        if ours != theirs:
            words = FIELD_WORDS.get(field, field)
            raise UserError(
                f"store teacher {name!r}: {words} differs from the configured teacher's "
                f"(store {short(ours)}, config {short(theirs)})"
            )


def check_same_plan(folder: Path, stored: dict, plan: dict) -> None:
    """A capture resumed (or a worker joining) in `folder` uses the settings it started with."""
    if stored.get("format") != FORMAT:
        raise UserError(f"store {folder}: format {stored.get('format')}, expected {FORMAT}")
    if stored["prompts"] != plan["prompts"]:
        raise UserError(
            f"store {folder}: captured from another prompt set ({stored['prompts']['count']} "
            f"prompts, sha256 {short(stored['prompts']['sha256'])}; now {plan['prompts']['count']}"
            f", {short(plan['prompts']['sha256'])}); use another --out folder"
        )
    for key in SETTINGS:
        if stored[key] != plan[key]:
            raise UserError(
                f"store {folder}: captured with {key} {stored[key]}, now {plan[key]}; "
                "use the same settings or another --out folder"
            )
    check_same_policy(folder, stored, plan.get("policy"))
    if list(stored["teachers"]) != list(plan["teachers"]):
        raise UserError(
            f"store {folder}: captured teachers {list(stored['teachers'])}, now "
            f"{list(plan['teachers'])}; use another --out folder"
        )
    for name, teacher in stored["teachers"].items():
        check_fingerprint(name, teacher["fingerprint"], plan["teachers"][name]["fingerprint"])


def check_same_policy(folder: Path, stored: dict, policy: str | None) -> None:
    """The store was captured under the teacher policy (its digest) that is asked now."""
    held = stored.get("policy")
    if held != policy:
        words = {None: "no policy"}
        raise UserError(
            f"store {folder}: captured under {words.get(held, f'policy {short(held)}')}, but the "
            f"run is under {words.get(policy, f'policy {short(policy)}')}; capture again under it"
        )


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what}: no {path.name} in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what}: {path} is damaged ({error})") from None
