"""Budget-capped batch jobs: many calls, a fixed amount of money, nothing lost.

>>> import json, pathlib, tempfile
>>> from tiersel.clock import FakeClock
>>> from tiersel.sim import AsyncSimTransport
>>> work = pathlib.Path(tempfile.mkdtemp())
>>> line = {"custom_id": "q1", "body": {"model": "kimi-k3", "max_tokens": 64,
...                                     "messages": [{"role": "user", "content": "Hello"}]}}
>>> with open(work / "in.jsonl", "w") as f:
...     print(json.dumps(line), file=f)
...     print("not json", file=f)
>>> clock = FakeClock()  # the simulator's latency passes at once
>>> summary = run_batch(work / "in.jsonl", work / "out.jsonl", budget_usd=0.01,
...                     transport=AsyncSimTransport(scenario="calm", clock=clock), clock=clock)
>>> summary.calls_ok, summary.calls_invalid, summary.spent_usd <= 0.01
(1, 1, True)
>>> [json.loads(row)["status"] for row in open(work / "out.jsonl")]
['invalid', 'ok']

`run_batch` / `arun_batch` (sync and async) send every line of a JSONL file through a
`tiersel.Selector`, write one row per line to OUT, and never let committed plus reserved spend
pass the budget. ``tiersel batch`` is the command-line face. See `tiersel.batch.runner` for the
cap and pacing, `tiersel.batch.journal` for crash safety and resume, `tiersel.batch.input` for
the line format and `tiersel.batch.rows` for the row format.
"""

from tiersel.batch.journal import JobLocked, JobWriteError, JournalError
from tiersel.batch.rows import Status
from tiersel.batch.runner import DEFAULT_CONCURRENCY, arun_batch, run_batch
from tiersel.batch.summary import BatchSummary, TierTally

__all__ = [
    "DEFAULT_CONCURRENCY",
    "BatchSummary",
    "JobLocked",
    "JobWriteError",
    "JournalError",
    "Status",
    "TierTally",
    "arun_batch",
    "run_batch",
]
