"""CI's check of a core install (``pip install .``, no extras): run from outside the checkout.

Imports tiersel, checks that the import loaded nothing optional, decides, and sends a call
through an ``httpx.MockTransport``, both as a plain `Selector.send` and through `TierTransport`
mounted on an httpx client. Exits non-zero with a message on the first thing that fails.
"""

from __future__ import annotations

import importlib.util
import json
import sys

OPTIONAL = ("httpx2", "redis", "uvicorn", "openai", "anthropic")
NOT_AT_IMPORT = ("tiersel.batch", "tiersel.sim", "tiersel.replay", "asyncio", *OPTIONAL)


def main() -> None:
    for name in OPTIONAL:
        assert importlib.util.find_spec(name) is None, f"{name} is installed: not a core install"

    import httpx

    import tiersel

    assert "site-packages" in tiersel.__file__, f"not the installed package: {tiersel.__file__}"
    loaded = [m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in NOT_AT_IMPORT)]
    assert not loaded, f"import tiersel loaded {loaded}"

    sel = tiersel.Selector(api_key="test-key")
    call = tiersel.Call(model="kimi-k3", input_tokens=2000, max_output_tokens=200)
    decision = sel.decide(call, tiersel.Requirements(deadline_s=30))
    print(f"decide: {decision.tier} for ${decision.estimated_cost_usd:.6f}")

    seen: list[dict[str, object]] = []

    def provider(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        usage = {"prompt_tokens": 2000, "completion_tokens": 20, "total_tokens": 2020}
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )

    body = {
        "model": "kimi-k3",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 200,
    }
    sender = tiersel.Selector(api_key="test-key", transport=httpx.MockTransport(provider))
    result = sender.send(body, requirements=tiersel.Requirements(deadline_s=30))
    assert result.ok, result
    print(f"Selector.send: {result.tier}, {result.attempts} attempt(s), ${result.cost_usd:.6f}")

    client = httpx.Client(
        base_url="https://api.fireworks.ai/inference/v1",
        transport=tiersel.TierTransport(
            tiersel.Selector(api_key=""), httpx.MockTransport(provider)
        ),
    )
    reply = client.post("/chat/completions", json=body, headers={"x-tiersel-deadline": "30"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-tiersel-tier"], reply.headers
    assert not any(k.startswith("x-tiersel") for k in seen[-1]), seen[-1]
    print(f"TierTransport: {reply.headers['x-tiersel-tier']}, {len(seen)} requests upstream")
    assert "httpx2" not in sys.modules
    print("core install: ok")


if __name__ == "__main__":
    main()
