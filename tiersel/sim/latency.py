"""The simulator's latency model, and where each of its numbers comes from.

Time to first token (TTFT) and time per output token for a request served by a pool (the shared
standard/priority pool of a model, or a router tier's own pool) at utilisation ``u`` (busy share
of the pool's batch slots, background tenants plus our own in-flight requests)::

    batch    = 1 + min(u, 1) * (slots - 1)
    ttft_ms  = overhead_ms + (prefill_ms_per_token * uncached_prompt_tokens
                              + queue_ms_per_batch_slot * (batch - 1) * queue_share) / speedup
    token_ms = (decode_ms + decode_ms_per_batch_slot * batch) / speedup

``queue_share`` is 1 for standard and router tiers and `LatencyParams.priority_queue_share` for
priority (priority traffic is scheduled ahead of standard, so it waits behind little of the
queue). Both are then multiplied by a jitter factor drawn uniformly from ``1 +/- jitter``.
Cached prompt tokens (a prompt prefix seen before, see `tiersel.sim.provider`) skip prefill.

Calibration. The Splitwise latency profile (``splitwise_perf_model.csv`` from
github.com/Mutinifni/splitwise-sim ``data/perf_model.csv``, MIT; Patel et al., "Splitwise:
Efficient generative LLM inference using phase splitting", ISCA 2024), rows ``llama2-70b`` on
``h100-80gb`` (tensor parallel 2), least-squares lines fitted once by `derive_coefficients`
(``tests/sim/test_latency_calibration.py`` re-derives them from the CSV):

===========================  ===========  =================================================
parameter                    value        source
===========================  ===========  =================================================
prefill_ms_per_token         0.1247       slope of ``prompt_time`` against ``prompt_size``
                                          (128..8192) at batch_size 1, token_size 128
queue_ms_per_batch_slot      38.44        slope of ``prompt_time`` against ``batch_size``
                                          (1..64) at prompt_size 512, token_size 128: each
                                          co-scheduled request adds this much prefill wait
decode_ms                    32.30        intercept of ``token_time`` against ``batch_size``
                                          (1..64) at prompt_size 512, token_size 128
decode_ms_per_batch_slot     0.2622       slope of the same line (48.1 ms/token at batch 64)
slots (pool default)         64           the largest batch size Splitwise measured
overhead_ms                  150          assumption: gateway, network and tokenisation
                                          time, not in Splitwise's GPU-side figures
priority_queue_share         0.1          assumption: priority is "prioritized above
                                          Standard traffic" (PROVIDERS.md), so it waits
                                          behind a tenth of the standard queue
router speedup               5.5          assumption sized from PROVIDERS.md ("aims for 100+
                                          tokens per second"): at a full batch and the worst
                                          jitter, (32.30 + 0.2622*64) / 5.5 * 1.1 = 9.8 ms a
                                          token, 102 tok/s; about 169 tok/s when idle
jitter                       0.1          assumption: +/-10% uniform; Splitwise's repeated
                                          runs vary by under 1%, a public API varies more
shed_ms                      200          assumption: how long a 503 shed takes to arrive
rate_limited_ms              50           assumption: how long a 429 takes to arrive
error_ms                     400          assumption: how long a 500 takes to arrive
===========================  ===========  =================================================

With these, a standard request with a 1,000-token prompt on an idle pool has a TTFT of about
0.28 s and then generates about 31 tokens/s; at full load TTFT grows by 2.4 s and generation
slows to about 20 tokens/s. Every value can be overridden in a scenario's ``latency`` section
(and ``slots``/``speedup`` per pool), see `tiersel.sim.scenarios`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Calibration", "LatencyParams", "derive_coefficients"]


@dataclass(frozen=True, slots=True)
class LatencyParams:
    """Coefficients of the latency model (see the module docstring for each one's source)."""

    overhead_ms: float = 150.0
    prefill_ms_per_token: float = 0.1247
    queue_ms_per_batch_slot: float = 38.44
    decode_ms: float = 32.30
    decode_ms_per_batch_slot: float = 0.2622
    priority_queue_share: float = 0.1
    jitter: float = 0.1
    shed_ms: float = 200.0
    rate_limited_ms: float = 50.0
    error_ms: float = 400.0

    def batch(self, utilisation: float, slots: int) -> float:
        """The batch size a pool at ``utilisation`` runs: 1 when idle, ``slots`` when full."""
        return 1.0 + min(max(utilisation, 0.0), 1.0) * (slots - 1)

    def ttft_s(
        self, uncached_prompt_tokens: int, batch: float, *, queue_share: float, speedup: float
    ) -> float:
        """Time to first token, before jitter."""
        work = (
            self.prefill_ms_per_token * uncached_prompt_tokens
            + self.queue_ms_per_batch_slot * (batch - 1.0) * queue_share
        )
        return (self.overhead_ms + work / speedup) / 1000.0

    def token_s(self, batch: float, *, speedup: float) -> float:
        """Time per output token after the first, before jitter."""
        return (self.decode_ms + self.decode_ms_per_batch_slot * batch) / speedup / 1000.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """The four coefficients `derive_coefficients` fits from the Splitwise profile."""

    prefill_ms_per_token: float
    queue_ms_per_batch_slot: float
    decode_ms: float
    decode_ms_per_batch_slot: float


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def derive_coefficients(
    csv_path: str | Path, *, model: str = "llama2-70b", hardware: str = "h100-80gb"
) -> Calibration:
    """Fit the latency coefficients from Splitwise's ``perf_model.csv`` (how the defaults came)."""
    with Path(csv_path).open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == model and r["hardware"] == hardware]
    if not rows:
        raise ValueError(f"{csv_path}: no rows for model={model!r}, hardware={hardware!r}")
    by_prompt = [
        (float(r["prompt_size"]), float(r["prompt_time"]))
        for r in rows
        if r["batch_size"] == "1" and r["token_size"] == "128"
    ]
    at_512 = [r for r in rows if r["prompt_size"] == "512" and r["token_size"] == "128"]
    by_batch_prefill = [(float(r["batch_size"]), float(r["prompt_time"])) for r in at_512]
    by_batch_decode = [(float(r["batch_size"]), float(r["token_time"])) for r in at_512]
    _, prefill = _line(by_prompt)
    _, queue = _line(by_batch_prefill)
    decode, decode_slope = _line(by_batch_decode)
    return Calibration(
        prefill_ms_per_token=prefill,
        queue_ms_per_batch_slot=queue,
        decode_ms=decode,
        decode_ms_per_batch_slot=decode_slope,
    )
