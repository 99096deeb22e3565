"""lineage.policy: the gate that decides, before anything is loaded, which teachers a student may
learn from; and `polydistill policy check`, its dry run."""

import subprocess
import sys
from pathlib import Path

import pytest

from polydistill.config import load_config
from polydistill.errors import UserError
from polydistill.lineage.facts import teacher_facts
from polydistill.lineage.policy import Policy, load_policy, policy_gate, violation

TINY = Path(__file__).parent.parent / "tiny.yaml"
STUDENT = ["student.teachers=[gemma, gptoss, qwen]"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def tiny(*overrides: str):
    return load_config(TINY, [*STUDENT, *overrides])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deny: {origins: [CN]}", "deny.origins: Extra inputs are not permitted"),
        ("colour: red", "colour: Extra inputs are not permitted"),
        ("on_violation: warn", "on_violation: Input should be 'refuse' or 'exclude'"),
        ("obligations: [naming, lunch]", "obligations.1: Input should be"),
        ("deny: [CN", "not valid YAML"),
    ],
)
def test_a_bad_policy_file_is_one_line(tmp_path, text, message):
    with pytest.raises(
        UserError, match=f"policy file .*policy.yaml: {message}".replace("[", r"\[")
    ):
        load_policy(write(tmp_path, text))


def test_a_missing_policy_file(tmp_path):
    with pytest.raises(UserError, match=r"policy file .*nope.yaml: not found"):
        load_policy(tmp_path / "nope.yaml")


def test_each_rule():
    facts = {t.name: teacher_facts(t) for t in tiny().teachers}
    gemma, qwen = facts["gemma"], facts["qwen"]
    deny_cn = Policy(deny={"origin": ["cn"]})
    assert violation(qwen, deny_cn) == "deny.origin lists CN (origin of the teacher)"
    assert violation(gemma, deny_cn) is None
    only_apache = Policy(allow={"licence": ["apache-2.0"]})
    assert (
        violation(gemma, only_apache)
        == "allow.licence does not list gemma (licence of the teacher)"
    )
    assert violation(qwen, only_apache) is None
    notices_only = Policy(obligations=["notice"])
    assert (
        violation(gemma, notices_only) == "obligations: gemma asks use_restrictions, not accepted"
    )
    assert violation(qwen, notices_only) is None
    assert violation(facts["gptoss"], Policy(deny={"publisher": ["OPENAI"]})) is not None
    assert violation(facts["gptoss"], Policy(deny={"family": ["gpt-oss"]})) is not None


def test_commercial_use(tmp_path):
    cfg = tiny("teachers[2].licence={id: qwen-research}")
    rule = violation(teacher_facts(cfg.teachers[2]), Policy(commercial=True))
    assert rule == "commercial: qwen-research forbids commercial use"
    assert violation(teacher_facts(cfg.teachers[2]), Policy()) is None


def test_refuse_names_teacher_and_rule():
    with pytest.raises(
        UserError, match=r"policy 'gov' refuses teacher 'qwen': deny.origin lists CN"
    ):
        policy_gate(tiny(), Policy(name="gov", deny={"origin": ["CN"]}))


def test_exclude_takes_the_teacher_out_of_the_students():
    cfg = tiny()
    gate = policy_gate(cfg, Policy(deny={"origin": ["CN"]}, on_violation="exclude"))
    assert gate.excluded == {"qwen": "deny.origin lists CN (origin of the teacher)"}
    assert gate.config.student.teachers == ["gemma", "gptoss"]
    assert cfg.student.teachers == ["gemma", "gptoss", "qwen"]  # the caller's config stays
    assert [t.name for t in gate.config.teachers] == ["gemma", "gptoss", "qwen"]
    nothing = policy_gate(cfg, None)
    assert nothing.excluded == {} and nothing.config is cfg


def test_exclude_cannot_leave_the_student_without_teachers_or_break_fusion():
    everyone = Policy(deny={"licence": ["apache-2.0", "gemma"]}, on_violation="exclude")
    with pytest.raises(UserError, match=r"the policy excludes every teacher of the student"):
        policy_gate(tiny(), everyone)
    routed = tiny(
        "student.fusion.strategy=route",
        "student.fusion.routes={arithmetic: gptoss, facts: qwen, strings: gemma}",
    )
    with pytest.raises(UserError, match=r"student.fusion names teacher 'qwen', which the policy"):
        policy_gate(routed, Policy(deny={"origin": ["CN"]}, on_violation="exclude"))


def test_the_digest_changes_with_the_policy():
    assert Policy().digest == Policy().digest
    assert Policy(deny={"origin": ["CN"]}).digest != Policy().digest


def polydistill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polydistill", *args], capture_output=True, text=True, timeout=120
    )


def test_policy_check_command(tmp_path):
    exclude = write(tmp_path, "name: gov\ndeny: {origin: [CN]}\non_violation: exclude\n")
    result = polydistill("policy", "check", str(TINY), *STUDENT, "--policy", str(exclude))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("gemma: gemma, Google LLC (US), licence gemma (from world stand-in")
    assert "obligations: notice, use_restrictions" in lines[0] and lines[0].endswith("-> allowed")
    assert lines[2].endswith("-> excluded: deny.origin lists CN (origin of the teacher)")

    refuse = write(tmp_path, "name: gov\ndeny: {origin: [CN]}\n")
    result = polydistill("policy", "check", str(TINY), *STUDENT, "--policy", str(refuse))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: policy 'gov' refuses teacher 'qwen': deny.origin lists CN (origin of the teacher)"
    ]
    bad = write(tmp_path, "deny: {country: [CN]}\n")
    result = polydistill("policy", "check", str(TINY), "--policy", str(bad))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
