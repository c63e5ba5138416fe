"""Loaded by the LiteLLM proxy from config.yaml (``litellm_settings.callbacks``): importing it
installs tiersel's handlers for the proxy's calls to Fireworks.

Environment: ``TIERSEL_BUDGET_USD`` caps the proxy's spend (in memory, for this process);
``TIERSEL_HOSTS`` names the hosts to route (comma-separated; Fireworks' by default);
``TIERSEL_TIME_SCALE``, to try it against ``tiersel sim serve --time-scale X``, runs tiersel's
clock at the simulator's speed (deadlines and waits in simulated seconds).
"""

from __future__ import annotations

import os

import tiersel
from tiersel.budget import MemoryLedger
from tiersel.clock import ScaledClock
from tiersel.litellm import FIREWORKS_HOSTS, TierselLiteLLM

budget = os.environ.get("TIERSEL_BUDGET_USD")
scale = os.environ.get("TIERSEL_TIME_SCALE")
selector = tiersel.Selector(
    ledger=MemoryLedger(float(budget)) if budget else None,
    clock=ScaledClock(float(scale)) if scale else None,
)
hosts = os.environ.get("TIERSEL_HOSTS", ",".join(FIREWORKS_HOSTS)).split(",")
handler = TierselLiteLLM(selector, hosts=hosts).install()
