"""Run the LiteLLM proxy example (docs/litellm-proxy) against the simulator, as a user would.

Usage: ``.venv/bin/python .ci/litellm_proxy.py PATH/TO/litellm`` (the ``litellm`` command of a
venv that has the proxy's packages, docs/litellm-proxy/requirements.txt, and tiersel).

Starts ``tiersel sim serve --scenario peak`` and ``litellm --config config.yaml`` on loopback,
sends 10 tight and 10 loose calls (and one stream) through the proxy with the openai SDK, their
requirements in the request's ``metadata``, and checks: tight calls escalate past standard,
loose ones stay on standard, LiteLLM's cost header is tiersel's, and no hint reaches upstream.
Exits non-zero, saying why, when a check fails.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from tiersel.sim.server import RunningServer, serve_in_subprocess

TIME_SCALE = 0.05  # the simulator and tiersel's clock in the proxy run 20x real time
HERE = Path(__file__).resolve().parent.parent / "docs" / "litellm-proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proxy: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            sys.exit(f"the proxy exited with {proxy.returncode} before it answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"the proxy did not answer {url} within {timeout_s:.0f} s")


def main(litellm_command: str) -> None:
    key = "sk-proxy-" + secrets.token_hex(16)
    port = free_port()
    with serve_in_subprocess("peak", time_scale=TIME_SCALE, seed=5) as sim:
        env = {
            **os.environ,
            "FIREWORKS_BASE_URL": sim.openai_base_url,
            "FIREWORKS_API_KEY": "sk-sim",
            "LITELLM_MASTER_KEY": key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "TIERSEL_HOSTS": "127.0.0.1",
            "TIERSEL_BUDGET_USD": "5",
            "TIERSEL_TIME_SCALE": str(TIME_SCALE),
        }
        # The proxy runs in the config's folder (it imports tiersel_proxy.py from there).
        command = [str(Path(litellm_command).resolve()), "--config", "config.yaml"]
        command += ["--port", str(port)]
        command += ["--host", "127.0.0.1"]
        log = open(HERE.parent.parent / ".ci-litellm-proxy.log", "wb")  # noqa: SIM115
        proxy = subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_up(base + "/health/liveliness", proxy)
            check(openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0), sim)
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
            log.close()


def check(client: openai.OpenAI, sim: RunningServer) -> None:
    client.chat.completions.create(  # a first call, off the clock: the proxy's one-off costs
        model="kimi-k3", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    sim.reset(time_s=150.0)  # inside the busy spell (90-300 s), with time to spare
    tight_tried: set[str] = set()
    loose_tiers: set[str] = set()
    failed = 0
    for i in range(20):
        tight = i % 2 == 0
        wanted = {"deadline_s": 10, "reliability": 0.99} if tight else {"deadline_s": 600}
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="kimi-k3",
                messages=[{"role": "user", "content": "hello " * 200}],
                max_tokens=60,
                extra_body={"metadata": {"tiersel": wanted}},
            )
        except openai.APIStatusError as exc:
            if not tight:
                sys.exit(f"a loose call failed: {exc}")
            failed += 1
            continue
        h = raw.headers
        tiersel_cost = float(h["llm_provider-x-tiersel-cost-usd"])
        litellm_cost = float(h["x-litellm-response-cost"])
        if abs(tiersel_cost - litellm_cost) > 1e-9:
            sys.exit(f"LiteLLM's cost {litellm_cost} is not tiersel's {tiersel_cost}")
        tried = h["llm_provider-x-tiersel-tried"].split(",")
        if tight:
            tight_tried.update(tried)
        else:
            loose_tiers.update(tried)
        print(
            f"call {i:2d} {'tight' if tight else 'loose'}: tried {','.join(tried)}, ${tiersel_cost}"
        )
    stream = client.chat.completions.create(
        model="kimi-k3",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=30,
        stream=True,
        extra_body={"metadata": {"tiersel": {"deadline_s": 600}}},
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    stats = sim.stats()
    print(f"tight calls tried {sorted(tight_tried)}, {failed} failed")
    print(f"loose calls tried {sorted(loose_tiers)}")
    print(f"stream: {len(streamed.split())} words; simulator: {stats['by_tier']}")
    if failed > 2:
        sys.exit(f"{failed} of 10 tight calls failed (each asked for 0.99)")
    if len(tight_tried) < 2:
        sys.exit(f"tight calls did not escalate: {tight_tried}")
    if loose_tiers != {"standard"}:
        sys.exit(f"loose calls left standard: {loose_tiers}")
    if not streamed:
        sys.exit("the streamed call brought no text")
    if stats["hinted"] or stats["priority_with_router"]:
        sys.exit(f"tiersel's hints or a forbidden combination reached upstream: {stats}")
    print("litellm proxy example: ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
