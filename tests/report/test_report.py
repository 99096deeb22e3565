"""The run report: its data (bars, stacks, tables, best-per-domain), the files it writes, and the
errors for bad input. The page in a real browser is tested in test_report_browser.py."""

import base64
import json
import math
import re
import tracemalloc
from html.parser import HTMLParser

import numpy as np
import pytest
from report_run import (
    DOMAINS,
    MODELS,
    TABLE_IDS,
    TEACHERS,
    synthetic_contributions,
    synthetic_metrics,
    train_records,
    write_synthetic_run,
)

from polydistill.errors import UserError
from polydistill.report import write_report
from polydistill.report.inputs import (
    Contributions,
    Metrics,
    load_contributions,
    load_run,
    read_records,
)
from polydistill.report.page import show
from polydistill.report.plots import grouped_bars, stacked_shares, trailing_mean
from polydistill.report.tables import (
    RECORD_KEYS,
    best_flags,
    completions_table,
    metric_table,
    ordered_models,
    target_rows,
    training_rows,
    worth_rows,
)

REPORT_ORDER = [
    "teacher:gemma",
    "teacher:gptoss",
    "teacher:qwen",
    "student",
    "baseline:single:qwen",
    "baseline:uniform",
    "baseline:seqkd",
    "baseline:oracle",
]


class TableCells(HTMLParser):
    """Every `<table id=...>` of a page as rows of (text, class) cells."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._class = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell, self._class = [], attributes.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(("".join(self._cell).strip(), self._class))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_models_are_ordered_teachers_student_baselines():
    assert ordered_models(MODELS) == REPORT_ORDER


def test_grouped_bars_hold_each_models_accuracy_per_domain():
    raw = synthetic_metrics()
    del raw["models"]["baseline:seqkd"]["accuracy"]["facts"]  # evaluated on two domains only
    domains, series = grouped_bars(Metrics.model_validate(raw), "accuracy")
    assert domains == DOMAINS
    assert [model for model, _ in series] == REPORT_ORDER
    for model, values in series:
        expected = [raw["models"][model]["accuracy"].get(d, math.nan) for d in DOMAINS]
        np.testing.assert_array_equal(values, expected)  # NaN where missing: no bar
    assert math.isnan(dict(series)["baseline:seqkd"][1])


def test_stacked_shares_put_each_teachers_mass_in_each_domain():
    contributions = Contributions.model_validate(synthetic_contributions())
    shown, layers = stacked_shares(contributions, ["facts", "strings", "arithmetic", "unseen"])
    assert shown == ["facts", "strings", "arithmetic"]
    assert [teacher for teacher, _ in layers] == TEACHERS
    stack = dict(layers)
    assert stack["gptoss"] == [0.85, 0.0, 0.03]  # no gptoss entry for strings -> 0
    assert stack["qwen"] == [0.05, 0.1, 0.95]
    np.testing.assert_allclose(np.sum([v for _, v in layers], axis=0), 1.0)


@pytest.mark.parametrize(
    ("values", "higher", "expected"),
    [
        ([0.2, 0.9, 0.5], True, [False, True, False]),
        ([0.2, 0.9, 0.5], False, [True, False, False]),
        ([0.9, None, 0.9, 0.1], True, [True, False, True, False]),  # ties all best
        ([math.nan, 0.3, None], False, [False, True, False]),  # NaN is never best
        ([None, math.nan], True, [False, False]),
    ],
)
def test_best_flags(values, higher, expected):
    assert best_flags(values, higher) == expected


@pytest.mark.parametrize(("key", "higher"), [("accuracy", True), ("bits_per_byte", False)])
def test_metric_table_flags_the_best_model_of_each_domain_and_of_the_mean(key, higher):
    raw = synthetic_metrics(seed=3)
    table = metric_table(Metrics.model_validate(raw), key, higher_is_better=higher)
    assert table.columns == (*DOMAINS, "mean")
    assert [row.model for row in table.rows] == REPORT_ORDER
    pick = max if higher else min
    for column, domain in enumerate(DOMAINS):
        winner = pick(MODELS, key=lambda m: raw["models"][m][key][domain])
        flagged = [row.model for row in table.rows if row.cells[column].best]
        assert flagged == [winner]
    means = {m: sum(raw["models"][m][key].values()) / len(DOMAINS) for m in MODELS}
    for row in table.rows:
        assert row.cells[-1].value == pytest.approx(means[row.model], rel=1e-12)
        assert row.params == raw["models"][row.model]["params"]
    assert [row.model for row in table.rows if row.cells[-1].best] == [pick(means, key=means.get)]


def test_targets_compare_the_student_with_the_specialists_baselines_and_largest_teacher():
    raw = synthetic_metrics(seed=5)
    models = raw["models"]
    models["teacher:qwen"]["accuracy"]["arithmetic"] = 0.98
    models["student"]["accuracy"]["arithmetic"] = 0.931  # exactly 95% of 0.98 is 0.931: met
    models["teacher:gptoss"]["accuracy"]["facts"] = 0.992
    models["student"]["accuracy"]["facts"] = 0.942  # below 0.9424: not met
    rows = target_rows(Metrics.model_validate(raw))
    teachers = [m for m in MODELS if m.startswith("teacher:")]
    for row, domain in zip(rows, DOMAINS, strict=False):
        best = max(teachers, key=lambda t: models[t]["accuracy"][domain])
        assert row.target.startswith(f"{domain}: 95% of {best} (")
        assert row.needed == pytest.approx(0.95 * models[best]["accuracy"][domain])
        assert row.reached == models["student"]["accuracy"][domain]
        assert row.met == (row.reached >= row.needed)
    assert rows[0].met and not rows[1].met
    means = {m: sum(models[m]["accuracy"].values()) / len(DOMAINS) for m in MODELS}
    rivals = ["baseline:single:qwen", "baseline:uniform", "baseline:seqkd"]  # never the oracle
    best_rival = max(rivals, key=means.get)
    mean_row = rows[3]
    assert best_rival in mean_row.target and mean_row.needed == pytest.approx(means[best_rival])
    assert mean_row.met == (means["student"] > means[best_rival])
    largest = max(teachers, key=lambda t: models[t]["params"])
    assert rows[4].needed == models[largest]["params"] and largest in rows[4].target
    assert rows[4].met == (models["student"]["params"] <= models[largest]["params"])
    assert len(rows) == 5


def test_targets_need_a_student_and_teachers():
    raw = synthetic_metrics()
    del raw["models"]["student"]
    assert target_rows(Metrics.model_validate(raw)) == []
    raw = synthetic_metrics()
    raw["models"] = {m: v for m, v in raw["models"].items() if not m.startswith("teacher:")}
    assert target_rows(Metrics.model_validate(raw)) == []


def test_a_model_missing_a_domain_has_no_mean():
    raw = synthetic_metrics()
    del raw["models"]["student"]["bits_per_byte"]["strings"]
    table = metric_table(Metrics.model_validate(raw), "bits_per_byte", higher_is_better=False)
    student = next(row for row in table.rows if row.model == "student")
    assert student.cells[2].value is None and student.cells[-1].value is None
    assert not student.cells[-1].best


def test_completions_table_counts_per_domain_and_teacher():
    table = completions_table(Contributions.model_validate(synthetic_contributions()), DOMAINS)
    assert table.teachers == tuple(TEACHERS)
    assert dict(table.rows) == {
        "arithmetic": (0, 10, 7990),
        "facts": (0, 500, 0),
        "strings": (300, 0, 2),
    }
    assert table.totals == (300, 510, 7992)


def test_training_rows_summarise_each_log():
    logs = {"student": train_records(50, 3.0, seed=1), "baseline:uniform": train_records(9, 2, 2)}
    rows = training_rows(logs)
    assert [row.model for row in rows] == ["student", "baseline:uniform"]
    student = rows[0]
    losses = [r["loss"] for r in logs["student"]]
    assert (student.steps, student.first_loss, student.final_loss) == (50, losses[0], losses[-1])
    assert student.lowest_loss == min(losses)
    assert dict(student.final_parts) == {
        "cross_entropy": logs["student"][-1]["cross_entropy"],
        "divergence": logs["student"][-1]["divergence"],
    }
    assert student.chosen is None and rows[1].chosen is None
    for step, score in ((10, 0.5), (20, 0.75), (30, 0.75), (40, 0.25)):
        logs["student"][step - 1]["validation"] = score
    assert training_rows(logs)[0].chosen == (20, 0.75)  # the earlier on a tie, as the loop


def test_record_keys_match_the_training_loop():
    from polydistill.train.step import RECORD_KEYS as LOOP_KEYS

    assert set(RECORD_KEYS) == set(LOOP_KEYS)


def test_trailing_mean_matches_a_plain_loop():
    values = [float(v) for v in np.random.default_rng(0).normal(size=37)]
    for window in (1, 4, 40):
        expected = [np.mean(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]
        np.testing.assert_allclose(trailing_mean(values, window), expected, rtol=1e-12)


def test_show_formats_each_kind():
    assert show(0.875, "percent") == "87.5%"
    assert show(1234567, "count") == "1,234,567"
    assert show(0.05, "share") == "0.050"
    assert show(0.123456, "number") == "0.1235"
    assert show(None, "number") == show(math.nan, "percent") == "–"


def test_read_records_skips_torn_lines_and_keeps_a_repeated_step_once(tmp_path):
    path = tmp_path / "log.jsonl"
    records = train_records(4, 3.0, seed=0)
    redo = {**records[2], "loss": 0.5}  # a resumed run repeats step 3
    lines = [json.dumps(r) for r in [*records[:3], redo, records[3]]]
    path.write_text("\n".join([*lines, '{"step": 5, "loss": 1.']) + "\n")
    kept, torn = read_records(path)
    assert [r["step"] for r in kept] == [1, 2, 3, 4]
    assert kept[2]["loss"] == 0.5 and torn == 1


def test_report_writes_every_plot_and_table(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    report = write_report(run)
    assert report == run / "report.html"
    html = report.read_text(encoding="utf-8")
    plots = sorted(p.name for p in (run / "plots").iterdir())
    assert plots == ["accuracy.png", "contributions.png", "loss.png", "tail.png"]
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert embedded == [
        base64.b64encode((run / "plots" / f"{name}.png").read_bytes()).decode()
        for name in ("accuracy", "loss", "contributions", "tail")  # in page order
    ]
    assert all(base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n") for png in embedded)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing is fetched
    tables = TableCells(html).tables
    assert set(tables) == TABLE_IDS
    raw = synthetic_metrics()
    accuracy = tables["accuracy-table"]
    assert [row[0][0] for row in accuracy[1:]] == REPORT_ORDER
    for column, domain in enumerate(DOMAINS, start=2):
        best = max(MODELS, key=lambda m: raw["models"][m]["accuracy"][domain])
        highlighted = [row[0][0] for row in accuracy[1:] if row[column][1] == "best"]
        assert highlighted == [best]
        assert accuracy[1 + REPORT_ORDER.index(best)][column][0] == show(
            raw["models"][best]["accuracy"][domain], "percent"
        )
    targets = target_rows(Metrics.model_validate(raw))
    assert [row[0][0] for row in tables["targets-table"][1:]] == [t.target for t in targets]
    assert [row[3][0] for row in tables["targets-table"][1:]] == [
        "yes" if t.met else "no" for t in targets
    ]
    assert [row[0][0] for row in tables["training-table"][1:]] == [
        "student",
        "baseline:single:qwen",
        "baseline:uniform",
    ]
    assert tables["completions-table"][-1] == [
        ("all domains", ""),
        ("300", ""),
        ("510", ""),
        ("7,992", ""),
    ]


def test_report_without_logs_or_contributions_says_what_is_absent(tmp_path):
    run = write_synthetic_run(tmp_path / ".tmp-run-staging", logs=False, contributions=False)
    (run / "plots").mkdir()
    (run / "plots" / "tail.png").write_bytes(b"stale")  # from an earlier report
    html = write_report(run, run_name="demo").read_text(encoding="utf-8")
    assert "Run folder <code>demo</code>" in html
    assert [p.name for p in (run / "plots").iterdir()] == ["accuracy.png"]
    assert html.count("data:image/png;base64,") == 1
    assert "No training logs in this run folder" in html
    assert "No contributions.json in this run folder" in html
    assert set(TableCells(html).tables) == {
        "accuracy-table",
        "targets-table",
        "bits-per-byte-table",
    }


def test_the_older_top_level_train_log_is_the_students(tmp_path):
    run = write_synthetic_run(tmp_path / "run", logs=False)
    lines = [json.dumps(r) for r in train_records(20, 3.0, seed=0)]
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    inputs = load_run(run)
    assert list(inputs.train_logs) == ["student"]
    assert len(inputs.train_logs["student"]) == 20


def _metrics_with(change) -> str:
    raw = synthetic_metrics()
    change(raw)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "metrics.json is missing"),
        ("{not json", "metrics.json: not JSON"),
        ("[1, 2]", "metrics.json: top level: Input should be"),
        (_metrics_with(lambda m: m.pop("domains")), "metrics.json: domains: Field required"),
        (
            _metrics_with(lambda m: m["models"]["student"]["accuracy"].update(facts=87.5)),
            "models.student.accuracy.facts: Input should be less than or equal to 1",
        ),
        (
            _metrics_with(lambda m: m["models"]["student"].update(params="5M")),
            "models.student.params: Input should be a valid integer",
        ),
        (
            _metrics_with(lambda m: m["models"].update(teacher=m["models"]["student"])),
            "model name 'teacher' is none of student, teacher:<name>, baseline:<name>",
        ),
        (
            _metrics_with(lambda m: m["models"]["student"]["bits_per_byte"].update(poetry=1.0)),
            "models.student.bits_per_byte: domain 'poetry' not in domains",
        ),
        (
            _metrics_with(lambda m: m["models"]["student"]["bits_per_byte"].update(facts=-1)),
            "models.student.bits_per_byte.facts: must not be negative",
        ),
    ],
)
def test_bad_metrics_are_a_user_error_naming_the_file(tmp_path, text, message):
    if text is not None:
        (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        write_report(tmp_path)
    assert str(tmp_path / "metrics.json") in str(caught.value)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["mass"]["facts"].update(mistral=0.0), "mass.facts: unknown teacher 'mistral'"),
        (lambda c: c["mass"]["facts"].update(qwen=0.5), "mass.facts: shares sum to 1.4500, not 1"),
        (lambda c: c["completions"].update(poetry={"qwen": 1}), "completions.poetry: domain"),
        (lambda c: c["tail"].update(phi=0.1), "tail: unknown teacher 'phi'"),
        (lambda c: c.pop("strategy"), "strategy: Field required"),
    ],
)
def test_bad_contributions_are_a_user_error(tmp_path, change, message):
    run = write_synthetic_run(tmp_path / "run", logs=False)
    raw = synthetic_contributions()
    change(raw)
    (run / "contributions.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match=re.escape(message)):
        write_report(run)


def test_cli_report_writes_the_report_and_refuses_a_missing_folder(tmp_path, capsys, monkeypatch):
    from polydistill.cli import main

    run = write_synthetic_run(tmp_path / "run", logs=False, contributions=False)
    monkeypatch.setattr("sys.argv", ["polydistill", "report", str(run)])
    main()
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").is_file()
    monkeypatch.setattr("sys.argv", ["polydistill", "report", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "error: run folder" in capsys.readouterr().err


def test_report_is_the_same_for_the_same_run(tmp_path):
    run = write_synthetic_run(tmp_path / "run", logs=False)
    first = write_report(run).read_bytes()
    assert write_report(run).read_bytes() == first


def test_what_each_teacher_is_worth(tmp_path):
    raw = synthetic_metrics()
    student = raw["models"]["student"]
    without = json.loads(json.dumps(student))
    without["accuracy"] = {d: student["accuracy"][d] - 0.1 * i for i, d in enumerate(DOMAINS)}
    del without["accuracy"][DOMAINS[-1]]
    raw["models"]["baseline:without:qwen"] = without
    (rows,) = worth_rows(Metrics.model_validate(raw))
    assert rows.teacher == "qwen"
    assert rows.cells[0] == (student["accuracy"][DOMAINS[0]], 0.0)
    assert rows.cells[1][1] == pytest.approx(0.1)
    assert rows.cells[-1] == (None, None)  # a domain the baseline was not scored on
    assert worth_rows(Metrics.model_validate(synthetic_metrics())) == []

    run = write_synthetic_run(tmp_path / "run")
    (run / "metrics.json").write_text(json.dumps(raw))
    html = write_report(run).read_text()
    assert 'id="worth-table"' in html
    assert "<td>qwen</td>" in html and "(+10.0 pts)" in html


def test_contributions_are_read_without_their_examples(tmp_path):
    """A run has one example per training row; the report never reads them, so they are not
    kept while the file is parsed (a run's memory must not grow with its prompts)."""
    raw = synthetic_contributions()
    raw["examples"] *= 10_000
    path = tmp_path / "contributions.json"
    path.write_text(json.dumps(raw, indent=1))
    tracemalloc.start()
    try:
        loaded = load_contributions(path, DOMAINS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the file's text, not the examples parsed (each several times its text)
    assert peak < 3 * path.stat().st_size, (peak, path.stat().st_size)
    assert loaded.examples == []
    assert (loaded.mass, loaded.completions, loaded.tail) == (
        raw["mass"],
        raw["completions"],
        raw["tail"],
    )
    path.write_text("{not json")
    with pytest.raises(UserError, match="not JSON"):
        load_contributions(path, DOMAINS)
