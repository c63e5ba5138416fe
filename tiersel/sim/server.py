"""Running the simulator as a real HTTP server on loopback (uvicorn, the ``tiersel[sim]`` extra).

`serve` runs it in this process until interrupted (what ``tiersel sim serve`` does);
`serve_in_subprocess` starts ``python -m tiersel.sim serve`` on a free port for tests and
benchmarks, waits until it answers, and stops it afterwards::

    with serve_in_subprocess("peak", time_scale=0.01) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-sim")
        ...
        assert server.stats()["hinted"] == 0
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tiersel.outgoing import is_loopback
from tiersel.sim.asgi import SimApp
from tiersel.sim.scenarios import Scenario
from tiersel.sim.service import API_PREFIX, SimService

__all__ = ["READY_PREFIX", "RunningServer", "is_loopback", "serve", "serve_in_subprocess"]

READY_PREFIX = "tiersel sim: listening on "
"""The line `serve` prints (then the base URL) once its socket accepts connections."""

_READY = re.compile(re.escape(READY_PREFIX) + r"(http://\S+)")


def serve(
    scenario: Scenario | str | Path = "calm",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    time_scale: float = 1.0,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator on ``host:port`` (0: a free port) until interrupted.

    ``announce`` receives the ready line (`READY_PREFIX` and the base URL) once the socket
    listens; by default it is printed to stdout.
    """
    if not is_loopback(host):
        raise ValueError(f"host {host!r} is not a loopback address; the simulator binds loopback")
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise RuntimeError(
            "the simulator's HTTP server needs uvicorn: pip install 'tiersel[sim]'"
        ) from None
    service = SimService(scenario, seed=seed, time_scale=time_scale)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    line = f"{READY_PREFIX}http://{shown}:{bound}"
    (announce or _print)(line)
    config = uvicorn.Config(
        SimApp(service),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class RunningServer:
    """A simulator server running in a subprocess (from `serve_in_subprocess`)."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def openai_base_url(self) -> str:
        """``base_url`` for ``openai.OpenAI`` (``.../inference/v1``)."""
        return self.base_url + API_PREFIX

    @property
    def anthropic_base_url(self) -> str:
        """``base_url`` for ``anthropic.Anthropic`` (``.../inference``; it appends ``/v1``)."""
        return self.base_url + API_PREFIX.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        """``GET /sim/stats``."""
        response = httpx.get(self.base_url + "/sim/stats", timeout=10)
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    def reset(self, *, seed: int | None = None, time_s: float | None = None) -> dict[str, Any]:
        """``POST /sim/reset``: forget every request; optionally reseed and set scenario time."""
        body = {k: v for k, v in (("seed", seed), ("time_s", time_s)) if v is not None}
        response = httpx.post(self.base_url + "/sim/reset", json=body, timeout=10)
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    def hold(self) -> dict[str, Any]:
        """``POST /sim/hold``: answer no generation request until `release`."""
        return self._post("/sim/hold")

    def release(self) -> dict[str, Any]:
        """``POST /sim/release``: answer the held requests, each after its simulated latency."""
        return self._post("/sim/release")

    def _post(self, path: str) -> dict[str, Any]:
        response = httpx.post(self.base_url + path, timeout=10)
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def serve_in_subprocess(
    scenario: Scenario | str | Path = "calm",
    *,
    seed: int = 0,
    time_scale: float = 1.0,
    host: str = "127.0.0.1",
    startup_timeout_s: float = 30.0,
) -> Iterator[RunningServer]:
    """Start ``python -m tiersel.sim serve`` on a free loopback port; stop it on exit.

    Yields a `RunningServer` once ``GET /sim/stats`` answers. A ``Scenario`` object is passed by
    its origin file. Raises ``RuntimeError`` with the server's output if it does not come up.
    """
    if isinstance(scenario, Scenario):
        if not Path(scenario.origin).is_file():
            raise ValueError("a Scenario built in memory cannot be passed to a subprocess")
        scenario = scenario.origin
    elif isinstance(scenario, Path) or Path(str(scenario)).is_file():
        scenario = str(Path(scenario).resolve())
    cmd = [
        sys.executable,
        "-m",
        "tiersel.sim",
        "serve",
        "--host",
        host,
        "--port",
        "0",
        "--scenario",
        str(scenario),
        "--seed",
        str(seed),
        "--time-scale",
        repr(float(time_scale)),
    ]
    fd, name = tempfile.mkstemp(prefix="tiersel-sim-", suffix=".log")
    log_path = Path(name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        server = RunningServer(_wait_ready(process, log_path, startup_timeout_s), process, log_path)
        yield server
    finally:
        _stop(process)
        with contextlib.suppress(OSError):
            log_path.unlink()


def _wait_ready(process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    base_url: str | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if base_url is None:
            match = _READY.search(log_path.read_text(encoding="utf-8", errors="replace"))
            if match:
                base_url = match.group(1)
        if base_url is not None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base_url + "/sim/stats", timeout=2).status_code == 200:
                    return base_url
        time.sleep(0.05)
    output = log_path.read_text(encoding="utf-8", errors="replace").strip()
    state = f"exited with code {process.returncode}" if process.poll() is not None else "timed out"
    raise RuntimeError(f"the simulator server did not come up ({state}): {output or 'no output'}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
