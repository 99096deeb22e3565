"""Every command README.md shows is run by a test, parses as the CLI takes it, and its config
(with its overrides) loads; `make demo` runs the command the README says it runs.

`COVERED` is the index: a pattern of README command lines and the test that runs that command.
A README command no pattern matches, a pattern no README command matches, or a test that does
not exist fails here, so the index cannot fall behind the README. The example configs' full runs
(minutes to hours) are checked to parse and load here; the same commands run on the tiny world
in the tests named.
"""

import ast
import re
import shlex
from pathlib import Path

import pytest
import typer

from polydistill.cli import app
from polydistill.config import load_config

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
TESTS = Path(__file__).parent
RUN_MAIN = "test_pipeline.py::test_run_writes_metrics_and_replaces_them_only_with_force"
STORE = "store/test_store.py::test_capture_command_with_shards_then_merge_then_a_run_from_the_store"
SERVE = "test_distil_then_serve.py::test_the_openai_client_buys_completions_and_streams_with_exact_usage"  # noqa: E501
KEYS = "test_distil_then_serve.py::test_a_key_is_listed_rotated_and_revoked_through_the_cli"
ENFORCED = (
    "lineage/test_lineage_enforced.py::test_an_excluded_teacher_is_never_loaded_captured_or_read"
)
EVAL = (
    "evaluate/test_eval_command.py::test_eval_scores_a_checkpoint_per_tag_with_graders_and_lm_eval"
)
COVERED = {
    r"run CONFIG --out DIR \[--force\]": RUN_MAIN,
    r"run examples/\S+\.yaml --out runs/\S+( (?!policy=)\S+=\S+)*$": "test_readme.py::test_readme_commands_parse",  # noqa: E501
    r"world build CONFIG": "test_pipeline.py::test_world_build_command_copies_the_world",
    r"capture CONFIG --out STORE": STORE,
    r"capture --merge": STORE,
    r"run CONFIG --out DIR student\.store=STORE": STORE,
    r"report DIR": "report/test_report.py::test_cli_report_writes_the_report_and_refuses_a_missing_folder",  # noqa: E501
    r"keys create (?!.*--policy)": "test_distil_then_serve.py::gateway",  # every serve test's
    r"keys create .*--policy ": "serve/test_serve_policy.py::live",  # the policy tests' gateway
    r"serve \S+=\S+ \S+=\S+": "serve/test_serve_policy.py::test_a_gov_key_sees_and_uses_only_the_qwen_free_student",  # noqa: E501
    r"serve \S+/student --port": SERVE,
    r"usage .*--format csv": SERVE,
    r"keys list ": KEYS,
    r"keys revoke\|rotate ": KEYS,
    r"policy check ": "lineage/test_lineage_policy.py::test_policy_check_command",
    r"run examples/\S+\.yaml --out runs/\S+ policy=": ENFORCED,
    r"lineage verify ": "test_distil_then_serve.py::test_the_run_writes_the_students_lineage_from_its_accounting",  # noqa: E501
    r"lineage keygen ": "lineage/test_lineage_record.py::test_lineage_keygen_command",
    r"eval runs/demo --data \S+\.jsonl --graders": EVAL,
    r"eval runs/demo --data \S+\.yaml --split": EVAL,
    r"eval runs/demo --data \S+ --lm-eval-task": EVAL,
}
# Placeholders of the README's command synopses, and what a parse check puts in their place.
PLACEHOLDERS = {
    "[--force]": "--force",
    "[key=value ...]": "eval.heldout_limit=2",
    "[--shard i/n]": "--shard 0/2",
    "CONFIG": "examples/specialists.yaml",
    "DIR": "runs/x",
    "STORE": "runs/store",
    "...": "runs/x.gateway.db",
}


def readme_commands() -> list[str]:
    """The `polydistill` lines of README.md's bash blocks, without their comments."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line.removeprefix("polydistill ") for line in lines if line.startswith("polydistill ")]


def test_every_readme_command_has_a_test_that_runs_it():
    commands = readme_commands()
    assert len(commands) >= 12
    for command in commands:
        matching = [p for p in COVERED if re.match(p, command)]
        assert len(matching) == 1, f"README command {command!r} matches {matching}: index it"
    for pattern, test in COVERED.items():
        assert any(re.match(pattern, c) for c in commands), f"{pattern!r}: no such README command"
        file, name = test.split("::")
        tree = ast.parse((TESTS / file).read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{test} does not exist"


def expand(command: str) -> list[list[str]]:
    """A README command line as argument lists: placeholders filled, `a|b` alternatives split."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    args = shlex.split(command)
    alternatives = [i for i, arg in enumerate(args) if "|" in arg]
    if not alternatives:
        return [args]
    (at,) = alternatives
    return [[*args[:at], choice, *args[at + 1 :]] for choice in args[at].split("|")]


def parse(args: list[str]):  # -> the command's context (typer's own click)
    """Parse `polydistill ARGS` as the CLI would, without running the command."""
    command = typer.main.get_command(app)
    name = "polydistill"
    while hasattr(command, "list_commands"):  # a group: the next argument names a command
        name, *args = args
        found = command.get_command(typer.Context(command), name)
        assert found is not None, f"no command {name!r}"
        command = found
    return command.make_context(name, args)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_commands_parse(command):
    for args in expand(command):
        context = parse(args)
        config, overrides = context.params.get("config"), context.params.get("overrides")
        if config is not None and (ROOT / config).is_file():
            load_config(ROOT / config, list(overrides or []))


def test_a_command_the_cli_does_not_take_fails_to_parse():
    for args in (["serve", "runs/x", "--prices", "1"], ["keys", "revoke", "--db", "x"]):
        with pytest.raises(Exception) as error:  # typer's usage errors, exit code 2
            parse(args)
        assert error.value.exit_code == 2, args


def test_make_demo_runs_the_readme_command():
    demo = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    command = demo.group(1).removeprefix("$(BIN)/polydistill ")
    assert command == "run examples/specialists.yaml --out runs/demo"
    assert f"make demo   # creates .venv, installs, runs: polydistill {command}" in (
        README.read_text()
    )
    test_readme_commands_parse(command)
