"""What a call is, what it requires, and the state of the budget it draws on."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BudgetState", "Call", "Requirements"]


class _Frozen(BaseModel):
    # defer_build: each model builds its validator on first use, not at `import tiersel`.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, defer_build=True)


class Call(_Frozen):
    """One generation call, as the policy sees it: a model and token counts.

    >>> Call(model="kimi-k3", input_tokens=1200, max_output_tokens=400).max_output_tokens
    400
    """

    model: str = Field(min_length=1)
    input_tokens: int = Field(ge=0)
    cached_input_tokens: int = Field(0, ge=0)
    max_output_tokens: int = Field(gt=0)
    expected_output_tokens: int | None = Field(None, ge=0)
    endpoint: str = "fireworks"
    max_input_tokens: int | None = Field(None, ge=0)
    """An upper bound of the prompt tokens the provider can bill (`input_tokens` is an estimate):
    worst-case costs, and so budget reservations, use it when set."""
    expected_cached_input_tokens: int | None = Field(None, ge=0)
    """The prompt tokens expected to be read from the provider's cache when the caller does not
    know (`cached_input_tokens` is what it knows): the expected time to the first token counts
    the prefill of the rest. Costs never count it: a guess must not lower a reservation. A door
    that reads a request body sets it to the tokens of the prompt's longest prefix the provider
    read lately, times the share of such tokens replies reported cached
    (`tiersel.engine.Engine.expect_cached`, `tiersel.prompts`)."""

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"model must name a model, got {value!r}")
        return value

    @field_validator(
        "input_tokens",
        "cached_input_tokens",
        "max_output_tokens",
        "expected_output_tokens",
        "max_input_tokens",
        "expected_cached_input_tokens",
        mode="before",
    )
    @classmethod
    def _not_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # an int to Python and to pydantic's lax mode
            raise ValueError(f"a token count must be a number, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Call:
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError(
                f"cached_input_tokens ({self.cached_input_tokens}) cannot exceed "
                f"input_tokens ({self.input_tokens})"
            )
        expected = self.expected_cached_input_tokens
        if expected is not None and expected > self.input_tokens:
            raise ValueError(
                f"expected_cached_input_tokens ({expected}) cannot exceed "
                f"input_tokens ({self.input_tokens})"
            )
        if self.max_input_tokens is not None and self.max_input_tokens < self.input_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) cannot be below "
                f"input_tokens ({self.input_tokens})"
            )
        if (
            self.expected_output_tokens is not None
            and self.expected_output_tokens > self.max_output_tokens
        ):
            raise ValueError(
                f"expected_output_tokens ({self.expected_output_tokens}) cannot exceed "
                f"max_output_tokens ({self.max_output_tokens})"
            )
        return self

    @property
    def input_tokens_bound(self) -> int:
        """The prompt tokens worst-case costs count: `max_input_tokens` when set."""
        return self.max_input_tokens if self.max_input_tokens is not None else self.input_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """The prompt tokens not read from a cache, as known or else as expected: those whose
        prefill delays the first token."""
        cached = self.cached_input_tokens
        expected = self.expected_cached_input_tokens
        if expected is not None and expected > cached:
            cached = expected
        return self.input_tokens - cached

    @property
    def output_tokens_for_latency(self) -> int:
        """Output tokens to plan latency on: the expected count when known, else the maximum."""
        if self.expected_output_tokens is not None:
            return self.expected_output_tokens
        return self.max_output_tokens


MAX_ATTEMPTS = 1000
"""The most attempts a call may be allowed. A schedule's attempts are spaced by backoffs of up to
10 s, so more would outlast any deadline; a million made each decision take seconds."""

MIN_DEADLINE_S = 0.001
"""The shortest deadline `Requirements` accepts, in seconds."""


class Requirements(_Frozen):
    """What a call needs. Every field is optional; None means "no requirement".

    - ``deadline_s``: end-to-end time the call must finish within, in seconds.
    - ``max_ttft_s``: the longest acceptable time to first token.
    - ``min_output_tps``: the slowest acceptable generation rate, output tokens per second.
    - ``reliability``: the probability, in (0, 1], that the call succeeds within its deadline.
    - ``tiers``: the tiers allowed, by name (None: every tier the model offers).
    - ``max_cost_usd``: the most one call may cost, at its worst case.
    - ``best_effort``: when no plan meets the requirements, choose the likeliest to succeed
      within the cost limits instead of raising `NoFeasibleTier`: on the tiers fast enough for
      ``max_ttft_s`` and ``min_output_tps``, or, where none of those reaches the policy's
      ``min_reliability``, on any tier.
    - ``max_attempts``: the most attempts the call may make (None: the selector's
      ``max_attempts``); the policy plans its schedule within them.
    - ``hedge``: allow a hedge (`tiersel.hedge`): when the first attempt has not answered after a
      delay, a second request to another tier races it, the loser cancelled. Chosen only where
      it is cheaper than a ladder of attempts for the same reliability, only with a deadline and
      two attempts allowed, and never for a streamed call.
    - ``watch``: allow a watched first attempt (`tiersel.watch`): its pace checked part way, and
      cut, for a tier of a quicker pace, when it would end too late (it is then billed what it
      generated). Chosen only where the policy watches, the call has a deadline and no
      ``max_cost_usd``, and the shell can watch it (`TierTransport`, the replay); False
      never cuts an attempt.

    A deadline shorter than `MIN_DEADLINE_S` is refused: no call can be served in it.

    >>> Requirements(deadline_s=10, reliability=0.99).deadline_s
    10.0
    """

    deadline_s: float | None = Field(None, ge=MIN_DEADLINE_S, allow_inf_nan=False)
    max_ttft_s: float | None = Field(None, gt=0.0)
    min_output_tps: float | None = Field(None, gt=0.0)
    reliability: float | None = Field(None, gt=0.0, le=1.0)
    tiers: tuple[str, ...] | None = None
    max_cost_usd: float | None = Field(None, ge=0.0)
    best_effort: bool = False
    max_attempts: int | None = Field(None, ge=1, le=MAX_ATTEMPTS)
    hedge: bool = False
    watch: bool = True

    @field_validator("tiers", mode="before")
    @classmethod
    def _split_tiers(cls, v: object) -> object:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if v is not None and not isinstance(v, (list, tuple, set, frozenset)):
            raise ValueError("must be a list of tier names or a comma-separated string")
        if v is not None and not v:
            raise ValueError("must name at least one tier")
        return tuple(str(t) for t in v) if v is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> Requirements:
        if (
            self.max_ttft_s is not None
            and self.deadline_s is not None
            and self.max_ttft_s > self.deadline_s
        ):
            raise ValueError(
                f"max_ttft_s ({self.max_ttft_s}) cannot exceed deadline_s ({self.deadline_s})"
            )
        return self


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A budget as the policy sees it at one instant.

    ``remaining_calls`` (when known, as in a batch) lets a pacing policy keep money for the calls
    still to come. ``overrun_usd``: what calls were charged beyond what they had reserved (a
    provider billing past the bound); it is in ``spent_usd`` too, and while spent passes the
    limit no reservation is granted.
    """

    limit_usd: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    remaining_calls: int | None = None
    overrun_usd: float = 0.0

    def __post_init__(self) -> None:
        for name in ("limit_usd", "spent_usd", "reserved_usd", "overrun_usd"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"BudgetState.{name} must be a finite number >= 0, got {value!r}")
        if self.remaining_calls is not None and self.remaining_calls < 0:
            raise ValueError(
                f"BudgetState.remaining_calls must be >= 0, got {self.remaining_calls}"
            )

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.limit_usd - self.spent_usd - self.reserved_usd)
