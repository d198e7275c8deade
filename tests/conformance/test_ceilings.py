"""Every ceiling follows one written rule from stored measurements, and docs and code say the same number.

The rule (conformance/spread.py, docs/conformance.md): worst measured value over every seed, shape
and device in the spread files x F, rounded up to the next 1-2-5 value. These tests read only
committed JSON files: they fail when a ceiling in conformance/tolerances.py is edited by hand, when
new measurements move a ceiling and tolerances.py was not updated, or when the table in
docs/conformance.md says another number.
"""

from __future__ import annotations

import json
import re

import pytest

from conformance import spread, tolerances
from weights.provenance import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "conformance.md"


@pytest.mark.parametrize(
    "x, expected",
    [(0, 0), (1e-6, 1e-6), (1.01e-6, 2e-6), (2e-6, 2e-6), (2.1e-6, 5e-6), (5.0e-6, 5e-6), (5.1e-6, 1e-5),
     (9.9e-6, 1e-5), (0.06, 0.1), (0.12, 0.2), (0.3, 0.5), (0.8, 1.0)],
)  # fmt: skip
def test_round_up_125(x, expected):
    assert spread.round_up_125(x) == pytest.approx(expected, rel=1e-12)


def test_the_rule_on_examples():
    F = spread.F
    assert spread.apply_rule(3e-7 / F, "logits") == pytest.approx(5e-7)
    assert spread.apply_rule(0, "generate_mismatches") == 0  # exact checks stay exact
    assert spread.apply_rule(0.9, "adamw_loss") is None  # above 1: no check, reported


def test_every_spread_file_was_written_by_the_spread_script_with_provenance():
    """A number that sets a ceiling has a source: the script, the commit, the device, the date."""
    found = 0
    for name, _ in spread.SOURCES:
        path = spread.RESULTS / name
        if not path.exists() or not name.startswith("ceiling-spread"):
            continue
        found += 1
        doc = json.loads(path.read_text())
        assert doc["measured_by"].startswith("python -m conformance.spread"), name
        rec = doc["provenance"]
        assert rec["git"]["commit"] and rec["date_utc"] and rec["versions"]["numpy"], name
        assert len({r["seed"] for r in doc["results"]}) >= 2, f"{name}: one seed is no spread"
    assert found, "no ceiling-spread-*.json in docs/results"


def test_tolerances_follow_the_rule():
    derived = spread.derive()
    assert derived["measurements"] > 0
    assert spread.differences(derived) == []


def test_every_judged_ceiling_was_measured():
    """No ceiling without a measurement behind it (a row nobody measured would be a guess)."""
    derived = spread.derive()["ceilings"]
    for prec, checks in tolerances.CEILINGS.items():
        for check, ceiling in checks.items():
            if ceiling is not None:
                assert derived[prec][check]["worst"] is not None, f"{prec} {check}: no measurement"


def test_F_covers_the_measured_seed_to_seed_spread():
    """F is the margin for seeds, shapes and devices not measured. Measured: how far one seed's worst
    exceeds the worst of all other seeds (same device, same run). F must be larger."""
    loo = spread.derive()["leave_one_out"]
    assert loo["groups"] > 0
    assert loo["ratio"] < spread.F, loo


def _doc_table() -> dict[str, dict[str, str]]:
    """docs/conformance.md's ceiling table: {check: {"fp32": cell, "bf16": cell}}."""
    text = DOC.read_text()
    section = text[text.index("| check | metric | float32 ceiling | bf16 ceiling |") :]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # \| is a literal bar
        key = re.search(r"`(\w+)`", cells[0])
        assert key, f"docs/conformance.md ceiling row without a `check` name: {line}"
        rows[key.group(1)] = {"fp32": cells[2], "bf16": cells[3]}
    return rows


def _doc_number(cell: str):
    if cell.startswith("reported"):
        return None
    return int(cell) if re.fullmatch(r"\d+", cell) else float(cell)


def test_the_docs_table_says_what_tolerances_py_says():
    rows = _doc_table()
    assert set(rows) == set(tolerances.FP32), "docs/conformance.md's table must have one row per check"
    for check, cells in rows.items():
        for prec in ("fp32", "bf16"):
            assert _doc_number(cells[prec]) == tolerances.CEILINGS[prec][check], (check, prec, cells[prec])
