"""What a newcomer reads: errors that name what they gave, rows that say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiersel.batch.input import LineParser
from tiersel.batch.rows import Charges, Status, invalid_row, unsent_row
from tiersel.batch.summary import INVALID_SHOWN, BatchSummary
from tiersel.call import Requirements
from tiersel.cli import main
from tiersel.cost import billed
from tiersel.pricing import load_pricing

from .conftest import batch_line, body, read_rows, write_jsonl


def batch(*argv: str) -> int:
    return main(["batch", *argv, "--budget-usd", "1", "--sim", "calm", "--no-progress"])


def test_a_missing_folder_or_a_folder_as_out_names_what_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [batch_line("a", body(0))])
    assert batch(str(src), "--out", str(tmp_path / "nowhere" / "o.jsonl")) == 2
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / 'nowhere'} does not exist" in err and ".lock" not in err
    assert batch(str(src), "--out", str(tmp_path)) == 2
    assert f"{tmp_path} is a folder" in capsys.readouterr().err


def test_bad_requirement_flags_are_named_with_their_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [batch_line("a", body(0))])
    assert batch(str(src), "--out", str(tmp_path / "o.jsonl"), "--deadline", "-5") == 2
    assert (
        capsys.readouterr().err
        == "tiersel: error: --deadline -5: must be greater than or equal to 0.001\n"
    )


def parse(raw: bytes) -> str:
    item = LineParser(load_pricing(), Requirements(), None).parse(1, raw)
    reason: str = item.reason  # type: ignore[union-attr]
    return reason


def test_a_line_cut_off_at_its_end_says_so() -> None:
    whole = json.dumps(batch_line("a", body(0)))
    cut = whole[:-7]
    assert parse(cut.encode() + b"\n") == (
        f"invalid JSON: the line ends at column {len(cut)} before its JSON value does (cut off?)"
    )
    # Anything else wrong points at the column where it is, on the line's own count.
    assert (
        parse(b'{"custom_id": "a", "body" {}}\n')
        == "invalid JSON: Expecting ':' delimiter (column 27)"
    )


def test_unsent_and_invalid_rows_have_every_field_a_sent_row_has() -> None:
    for raw in (
        invalid_row("x", 3, "invalid JSON"),
        unsent_row("y", 4, Status.budget_exhausted, "budget_exhausted", "no money", Charges()),
    ):
        row = json.loads(raw)
        assert row["tiers_tried"] == [] and row["escalated"] is False and row["attempts"] == 0


def test_costs_are_shown_to_billing_precision() -> None:
    noisy = 0.0010001 + 0.0019372  # 0.0029372999999999995 in binary floating point
    assert noisy != 0.0029373 and billed(noisy) == 0.0029373
    row = json.loads(unsent_row("z", 1, Status.failed, "x", "y", Charges(noisy, noisy)))
    assert row["cost_usd"] == row["unconfirmed_usd"] == 0.0029373
    summary = BatchSummary("in", "out", 1.0, 3)
    for _ in range(3):
        summary.count(Status.ok, "standard", noisy)
    assert summary.to_dict()["spent_usd"] == 0.0088119


def test_the_summary_names_the_first_invalid_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[object] = [b"not json", batch_line("ok", body(0))]
    lines += [f'{{"custom_id": "c{i}"'.encode() for i in range(INVALID_SHOWN + 2)]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "o.jsonl"
    assert batch(str(src), "--out", str(out)) == 1
    text = capsys.readouterr().out
    assert "invalid line 1: invalid JSON: Expecting value (column 1)" in text
    assert "invalid line 3: invalid JSON: the line ends at column 18" in text
    assert f"invalid line {INVALID_SHOWN + 1}:" in text
    assert f"invalid line {INVALID_SHOWN + 2}:" not in text
    assert f"and 3 invalid lines more: their rows in {out} say why" in text
    assert {r["status"] for r in read_rows(out) if r["line"] == 2} == {"ok"}


def test_a_line_nested_past_what_json_reads_is_invalid_and_the_job_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = b'{"custom_id": "deep", "body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    src = write_jsonl(tmp_path / "in.jsonl", [deep, batch_line("ok", body(0))])
    out = tmp_path / "o.jsonl"
    assert batch(str(src), "--out", str(out)) == 1
    rows = {r["line"]: r for r in read_rows(out)}
    assert rows[1]["status"] == "invalid"
    assert rows[1]["error"]["message"] == "line 1: invalid JSON: nested too deeply to read"
    assert rows[2]["status"] == "ok"
    assert "Traceback" not in capsys.readouterr().err
    # A resume reads the same OUT back without tripping on the line either.
    assert batch(str(src), "--out", str(out), "--resume") == 1
