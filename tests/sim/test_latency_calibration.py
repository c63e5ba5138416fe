"""The latency defaults are the ones the Splitwise profile gives (re-derived from the CSV)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiersel.sim.latency import LatencyParams, derive_coefficients

# A copy kept in the repository, with its source and licence: tests/data/README.md.
SPLITWISE = Path(__file__).resolve().parents[1] / "data" / "splitwise_perf_model.csv"


def test_defaults_match_the_splitwise_profile() -> None:
    fitted = derive_coefficients(SPLITWISE)
    d = LatencyParams()
    # The defaults are the fitted values rounded to 4 significant figures.
    assert d.prefill_ms_per_token == pytest.approx(fitted.prefill_ms_per_token, rel=1e-3)
    assert d.queue_ms_per_batch_slot == pytest.approx(fitted.queue_ms_per_batch_slot, rel=1e-3)
    assert d.decode_ms == pytest.approx(fitted.decode_ms, rel=1e-3)
    assert d.decode_ms_per_batch_slot == pytest.approx(fitted.decode_ms_per_batch_slot, rel=1e-3)


def test_derive_names_the_file_when_it_has_no_matching_rows(tmp_path: Path) -> None:
    empty = tmp_path / "perf.csv"
    empty.write_text(SPLITWISE.read_text(encoding="utf-8").splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"perf\.csv: no rows for model='llama2-70b'"):
        derive_coefficients(empty)


def test_model_shape() -> None:
    p = LatencyParams()
    idle, full = p.batch(0.0, 64), p.batch(1.7, 64)
    assert (idle, full) == (1.0, 64.0)
    assert p.ttft_s(4000, idle, queue_share=1, speedup=1) > p.ttft_s(
        100, idle, queue_share=1, speedup=1
    )
    assert p.token_s(full, speedup=1) > p.token_s(idle, speedup=1)
    # Router pools (speedup 5.5) make 100+ tokens/s even at a full batch with the worst jitter.
    assert 1 / (p.token_s(full, speedup=5.5) * (1 + p.jitter)) >= 100
