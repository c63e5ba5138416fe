"""What does `TierTransport` add to a call? Per-call wall time through it versus a plain transport,
to the same local server, in the same run, interleaved call by call.

    python benchmarks/transport_overhead.py [--n 2000] [--warmup 200]

The server is a trivial local HTTP server (uvicorn in a subprocess, on loopback) that answers
``POST .../chat/completions`` at once with a fixed completion (and usage), or with a short SSE
stream when the body asks for one, so the figures are the client side's cost, not a model's.
Each round sends one call through each arm, in an order that rotates from round to round:

- ``plain``: a plain ``httpx.Client``;
- ``tiersel``: ``httpx.Client(transport=TierTransport(Selector()))``;
- ``floor-read`` and ``floor-report``: two reference transports, not tiersel, that do only what
  any transport choosing a tier per call cannot avoid. ``floor-read`` parses the request body
  (a tier cannot be chosen without the model), forwards the request unchanged, reads the whole
  response and parses it (the cost needs the usage), and hands the same response back.
  ``floor-report`` also reports, as the issue asks: it hands back a response carrying two
  ``x-tiersel-*`` headers. Neither decides anything, records a signal or reserves budget. Their
  added time is a floor, measured in the same run, under any ``TierTransport``'s.
- ``parts``: a third reference, tiersel's own parts on the happy path with none of a door's
  bookkeeping: the call read, decided by the policy, sent, one signals record, its cost and
  three headers; no retries, hints, budget, hooks or prompt memory. What any door that decides
  each call with tiersel's policy adds at least.
- ``bare``: a fourth, tiersel's reporting alone: hints scanned, the usage billed at a step
  decided once for the first call, and the seven headers a ``TierTransport`` hands back; nothing
  decided or recorded per call. What a door that reports as tiersel does adds even with no
  decision at all.

The cases:

- ``httpx``: the request built and sent with httpx directly;
- ``openai``: the same through the openai SDK (its own overhead is in both arms);
- ``openai-stream``: a streamed call through the openai SDK, read to its end.

Then, when LiteLLM is installed (an optional extra), a pair of its own: ``litellm.completion`` to
the same server through its OpenAI provider against the plain openai call, interleaved: what a
router adds over a plain openai call, in the same run (last, as importing LiteLLM starts
background threads that would slow the arms beside it).

Prints, per case and arm, the median per-call time, the added microseconds over ``plain`` (the
difference of the medians, and the median of the per-round differences) and the ratio of the
medians. Target (issue 3): <= 50 us added per call (median) and <= 5% for non-streaming calls.
The reference arms run in the non-streaming cases only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "accounts/fireworks/models/kimi-k3",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17},
    }
).encode()


def _chunk(delta: dict[str, Any], usage: dict[str, int] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "accounts/fireworks/models/kimi-k3",
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    if usage:
        doc["usage"] = usage
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


_STREAM = (
    _chunk({"role": "assistant", "content": ""})
    + b"".join(_chunk({"content": w}) for w in ("Hel", "lo", "!"))
    + _chunk({}, {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17})
    + b"data: [DONE]\n\n"
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The trivial server: a fixed completion, or a fixed stream, for any POST."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    streamed = b'"stream":true' in body.replace(b" ", b"")
    content = _STREAM if streamed else _COMPLETION
    kind = b"text/event-stream" if streamed else b"application/json"
    headers = [(b"content-type", kind), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(port: int) -> None:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", str(port)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}/inference/v1"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the benchmark server did not start within 20 s")


def _interleaved(
    plain: Callable[[], object], tiered: Callable[[], object], n: int, warmup: int
) -> tuple[list[float], list[float]]:
    a, b = _rounds([plain, tiered], n, warmup)
    return a, b


def _rounds(arms: list[Callable[[], object]], n: int, warmup: int) -> list[list[float]]:
    """Per-call microseconds of each arm: ``n`` rounds of one call per arm, the order rotating
    from round to round so that no arm always follows another."""
    for _ in range(warmup):
        for fn in arms:
            fn()
    times: list[list[float]] = [[] for _ in arms]
    order = list(range(len(arms)))
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(n):
            shift = i % len(arms)
            for k in order[shift:] + order[:shift]:
                fn, out = arms[k], times[k]
                t0 = clock()
                fn()
                out.append((clock() - t0) / 1000.0)
    finally:
        gc.enable()
    return times


def _litellm_arm(base: str, body: dict[str, Any]) -> Callable[[], object] | None:
    """``litellm.completion`` to the same server through its OpenAI provider (which calls the
    openai SDK), or None when LiteLLM is not installed (it is an optional extra)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price map fetched
    try:
        import litellm
    except ImportError:
        return None
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    model, messages = "openai/" + str(body["model"]), body["messages"]

    def call() -> object:
        return litellm.completion(
            model=model, messages=messages, max_tokens=16, api_base=base, api_key="bench"
        )

    return call


def _against(added: dict[tuple[str, str], float], with_litellm: bool) -> None:
    """Issue 16's targets: tiersel's added time at most 2.5x the floor-report arm's, and at most
    1/40 of what litellm.completion adds over a plain openai call."""
    for case in ("httpx", "openai"):
        ours, floor = added[(case, "tiersel")], added[(case, "floor-report")]
        parts = added[(case, "parts")]
        print(
            f"{case}: tiersel adds {ours / floor:.1f}x what floor-report adds (target <= 2.5x);"
            f" tiersel's parts alone, {parts / floor:.1f}x;"
            f" bare, {added[(case, 'bare')] / floor:.1f}x"
        )
    if not with_litellm:
        print("litellm is not installed (pip install litellm): its arm was not run")
        return
    ours, theirs = added[("openai", "tiersel")], added[("openai", "litellm")]
    bare = added[("openai", "bare")]
    print(
        f"openai: tiersel adds {ours:.0f} us, litellm.completion {theirs:.0f} us:"
        f" 1/{theirs / ours:.0f} of LiteLLM's (target <= 1/40, {theirs / 40:.0f} us);"
        f" bare, with nothing decided, adds {bare:.0f} us: 1/{theirs / bare:.0f}"
    )


def _fetch_whole(inner: Any, request: Any) -> tuple[Any, bytes]:
    """A reference transport's send: the response from ``inner`` and its whole body, read."""
    response = inner.handle_request(request)
    stream = response.stream
    try:
        content = b"".join(stream)
    finally:
        stream.close()
    return response, content


def _answer(response: Any, content: bytes, extra: list[tuple[bytes, str]]) -> Any:
    """The response handed back: ``response``'s status, headers and ``content``, with ``extra``
    headers."""
    import httpx

    headers = [*response.headers.raw, *((k, v.encode()) for k, v in extra)]
    return httpx.Response(response.status_code, headers=headers, stream=httpx.ByteStream(content))


def _floor_transport(report: bool) -> Any:
    """A reference transport (see the module's docstring): the unavoidable part of choosing a
    tier per call, and nothing else. ``report``: also hand back two decision headers (the cost
    at standard's price from the shipped table: the figure is a stand-in, its arithmetic is not)."""
    import httpx

    import tiersel
    from tiersel.cost import charge

    prices = tiersel.Selector(api_key="").pricing

    class Floor(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            model = json.loads(request.content)["model"]
            response, content = _fetch_whole(self.inner, request)
            usage = json.loads(content)["usage"]
            if not report:
                response.stream = httpx.ByteStream(content)
                return response
            cost = charge(
                prices.model(model),
                "standard",
                usage["prompt_tokens"],
                0,
                usage["completion_tokens"],
            )
            extra = [(b"x-tiersel-model", model), (b"x-tiersel-cost-usd", f"{cost:.8f}")]
            return _answer(response, content, extra)

        def close(self) -> None:
            self.inner.close()

    return Floor()


def _parts_transport() -> Any:
    """A reference transport of tiersel's own parts with none of a door's bookkeeping (see the
    module's docstring): the call read (`Engine.call_for`), decided (`Selector.decide`), its
    step applied when it changes the request, sent, the reply parsed and its usage read, one
    signals record (`Selector.record`), its cost, and the decision headers. Happy path only: no
    retries, hints, requirements blocks, budget, hooks or prompt memory."""
    import httpx

    import tiersel
    from tiersel.cost import charge
    from tiersel.dialects import Dialect, apply_step, classify, read_usage
    from tiersel.signals import Observation

    sel = tiersel.Selector(api_key="")
    engine, clock = sel.engine, sel.clock

    class Parts(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            call, _ = engine.call_for(body, Dialect.openai)
            step = sel.decide(call).plan[0]
            upstream = request
            if step.model != body["model"] or step.body:
                content = json.dumps(apply_step(body, step)).encode()
                upstream = httpx.Request(
                    "POST", request.url, headers=request.headers, content=content
                )
            started = clock.now()
            response, content = _fetch_whole(self.inner, upstream)
            elapsed = clock.now() - started
            payload = json.loads(content)
            outcome = classify(response.status_code, {}, payload).outcome
            usage = read_usage(payload, Dialect.openai)
            assert usage is not None
            sel.record(call.model, step.tier, Observation(outcome, latency_s=elapsed))
            cost = charge(
                engine.pricing.model(call.model),
                step.tier,
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.completion_tokens,
            )
            extra = [
                (b"x-tiersel-tier", step.tier),
                (b"x-tiersel-model", step.model),
                (b"x-tiersel-cost-usd", f"{cost:.9f}"),
            ]
            return _answer(response, content, extra)

        def close(self) -> None:
            self.inner.close()

    return Parts()


def _bare_transport() -> Any:
    """A reference transport of tiersel's reporting alone (see the module's docstring): the
    request's hint headers scanned and its model read, sent unchanged, the reply's usage read
    and billed at a step decided once, for the first call, and the seven ``x-tiersel-*``
    headers a `TierTransport` hands back on a served call. Nothing decided per call, no
    signals recorded, no budget."""
    import httpx

    import tiersel
    from tiersel.dialects import Dialect, dialect_for_path, read_usage
    from tiersel.engine.billing import bill
    from tiersel.engine.core import new_call_id
    from tiersel.http.route import scan_headers

    sel = tiersel.Selector(api_key="")
    engine = sel.engine

    class Bare(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()
            self.decided: Any = None

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            dialect = dialect_for_path(request.url.path) or Dialect.openai
            scan_headers(request.headers.raw)
            body = json.loads(request.content)
            if self.decided is None:
                call, _ = engine.call_for(body, dialect)
                self.decided = engine.pricing.model(call.model), sel.decide(call).plan[0]
            prices, step = self.decided
            response, content = _fetch_whole(self.inner, request)
            usage = read_usage(json.loads(content), dialect)
            cost, served = bill(prices, step, usage)
            extra = [
                (b"x-tiersel-call-id", new_call_id()),
                (b"x-tiersel-attempts", "1"),
                (b"x-tiersel-tried", step.tier),
                (b"x-tiersel-cost-usd", f"{cost:.9f}"),
                (b"x-tiersel-cost-basis", "actual"),
                (b"x-tiersel-tier", served),
                (b"x-tiersel-model", step.model),
            ]
            return _answer(response, content, extra)

        def close(self) -> None:
            self.inner.close()

    return Bare()


def _attribution(body: dict[str, Any], url: str, n: int) -> None:
    """Where the added time goes, in process (no network): the core's attempt flow alone
    (`Selector.send` to a function that answers at once) and the whole transport (its
    ``handle_request`` over an ``httpx.MockTransport``), each less the fake upstream's own cost."""
    import httpx

    import tiersel
    import tiersel.dialects
    import tiersel.signals
    from tiersel.wrap import TierTransport

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=_COMPLETION
        )

    mock = httpx.MockTransport(answer)
    transport = TierTransport(tiersel.Selector(api_key=""), mock)
    core = tiersel.Selector(api_key="", transport=answer)
    request = httpx.Client().build_request("POST", url, json=body)
    request.read()
    upstream, whole = _interleaved(
        lambda: mock.handle_request(request), lambda: transport.handle_request(request), n, 200
    )
    bare, flow = _interleaved(
        lambda: answer(request), lambda: core.send(body, path="/chat/completions"), n, 200
    )
    in_flow = statistics.median(flow) - statistics.median(bare)
    in_transport = statistics.median(whole) - statistics.median(upstream)
    # Two parts of every call that are not the transport's own: the policy's decision (with
    # the signals read for it) and the one observation recorded into the signals.
    sel = tiersel.Selector(api_key="")
    call, _ = sel.engine.call_for(body, tiersel.dialects.Dialect.openai)
    key = sel.engine.signal_keys(call.model)[0]
    seen = tiersel.signals.Observation(tiersel.signals.Outcome.ok, latency_s=0.01)
    decide, record = _interleaved(
        lambda: sel.decide(call), lambda: sel.record(call.model, key.tier, seen), n, 200
    )
    print("in process, median us per call (less the fake upstream's own time):")
    print(f"  core attempt flow (Selector.send):   {in_flow:7.1f}")
    print(f"  TierTransport.handle_request, total: {in_transport:7.1f}")
    print(f"    of which the policy (Selector.decide): {statistics.median(decide):7.1f}")
    print(f"    and one signals record:                {statistics.median(record):7.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="calls per arm per case")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0

    import httpx
    import openai

    import tiersel
    from tiersel.wrap import TierTransport

    proc, base = _start_server()
    try:
        selector = tiersel.Selector(api_key="")
        clients = {
            "plain": httpx.Client(),
            "tiersel": httpx.Client(transport=TierTransport(selector)),
            "floor-read": httpx.Client(transport=_floor_transport(report=False)),
            "floor-report": httpx.Client(transport=_floor_transport(report=True)),
            "parts": httpx.Client(transport=_parts_transport()),
            "bare": httpx.Client(transport=_bare_transport()),
        }
        body = {
            "model": "accounts/fireworks/models/kimi-k3",
            "messages": [{"role": "user", "content": "Say hello in one word."}],
            "max_tokens": 16,
        }
        url = base + "/chat/completions"

        def post(client: httpx.Client) -> Callable[[], object]:
            return lambda: client.post(url, json=body).raise_for_status()

        def sdk(client: httpx.Client, stream: bool) -> Callable[[], object]:
            oai = openai.OpenAI(api_key="bench", base_url=base, http_client=client)
            messages: Any = body["messages"]

            def call() -> object:
                if stream:
                    chunks = oai.chat.completions.create(
                        model=str(body["model"]), messages=messages, max_tokens=16, stream=True
                    )
                    return [c for c in chunks]
                return oai.chat.completions.create(
                    model=str(body["model"]), messages=messages, max_tokens=16
                )

            return call

        everyone = list(clients)
        cases: list[tuple[str, dict[str, Callable[[], object]]]] = [
            ("httpx", {arm: post(clients[arm]) for arm in everyone}),
            ("openai", {arm: sdk(clients[arm], False) for arm in everyone}),
            ("openai-stream", {arm: sdk(clients[arm], True) for arm in ("plain", "tiersel")}),
        ]
        print(f"TierTransport overhead, {args.n} calls per arm, interleaved, server {base}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"load average at start: {load:.2f} on {os.cpu_count()} CPUs")
        head = ("case", "arm", "p50 us", "added us", "paired us", "ratio")
        print(
            f"{head[0]:14s} {head[1]:13s} {head[2]:>9s} {head[3]:>9s} {head[4]:>10s} {head[5]:>7s}"
        )
        added: dict[tuple[str, str], float] = {}
        for name, arms in cases:
            times = _rounds(list(arms.values()), args.n, args.warmup)
            base_times = times[0]
            pa = statistics.median(base_times)
            print(f"{name:14s} {'plain':13s} {pa:9.1f}")
            for arm, got in zip(list(arms)[1:], times[1:], strict=True):
                pb = statistics.median(got)
                paired = statistics.median(y - x for x, y in zip(base_times, got, strict=True))
                added[(name, arm)] = pb - pa
                print(f"{'':14s} {arm:13s} {pb:9.1f} {pb - pa:9.1f} {paired:10.1f} {pb / pa:7.3f}")
        print(
            "added = difference of the medians over plain; paired = median of the per-round"
            " differences. Target: <= 50 us added and ratio <= 1.05 for the non-streaming cases."
        )
        # LiteLLM last, in a pair of its own: importing it starts background threads that would
        # slow every arm measured beside it.
        litellm_call = _litellm_arm(base, body)
        if litellm_call is not None:
            plain_t, theirs_t = _rounds(
                [sdk(clients["plain"], False), litellm_call], max(200, args.n // 4), args.warmup
            )
            pa, pb = statistics.median(plain_t), statistics.median(theirs_t)
            added[("openai", "litellm")] = pb - pa
            print(f"openai, then:  plain {pa:9.1f}  litellm {pb:9.1f}  added {pb - pa:9.1f} us")
        _against(added, litellm_call is not None)
        _attribution(body, url, args.n)
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
