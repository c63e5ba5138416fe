"""The job's budget: any `Ledger`, with each line's attempts accounted and journaled.

`JournaledLedger` is itself a `Ledger`, so the selector's one dispatch flow reserves, settles and
releases through it as through any other. On top of the ledger it wraps (the *inner* one) it:

- holds one reservation per line, its *envelope*, from the line's first attempt until the line
  is done: an attempt that was shed or refused unbilled leaves the envelope in place for the
  retry (raised if the retry's tier costs more), so calls in flight keep the money they need to
  finish and new lines cannot take it from under them. The line deciding now sees its own
  envelope as money it may spend (`JournaledLedger.state_for`: the engine asks with the
  call's id);
- journals every attempt (``<call id>#<n>``): its reservation before its request leaves, then
  its charge or release;
- charges an attempt whose billing is unknown (its request may have reached the provider but no
  answer came: a read timeout, a connection lost mid-response, a cancellation) at its reserved
  worst case instead of releasing it, so the cap holds even if the provider billed it;
- notices a charge above the attempt's reservation (a provider billing more than ``max_tokens``
  and the input bound allow). It is charged in full, since money spent is spent, so the cap can
  then be passed by that excess; `overrun_usd` says so, and the job stops sending;
- tells the policy how many calls remain (``BudgetState.remaining_calls``), for pacing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tiersel.batch.journal import JobWriter, release_record, reserve_record, settle_record
from tiersel.batch.rows import Charges
from tiersel.budget import Ledger
from tiersel.call import BudgetState

__all__ = ["JournaledLedger", "LineAccount"]

# A charge counts as over its reservation only past float noise.
_OVERRUN_EPS = 1e-12


@dataclass(slots=True)
class LineAccount:
    """One line's money: its envelope, its attempts, and what they were charged."""

    call_id: str
    line: int
    carried: Charges = field(default_factory=Charges)
    charged_usd: float = 0.0
    unconfirmed_usd: float = 0.0
    overrun_usd: float = 0.0
    attempts: int = 0
    envelope_id: str | None = None  # the line's reservation in the inner ledger
    envelope_usd: float = 0.0
    attempt_id: str | None = None  # the attempt under way (reserved, not yet ended)
    attempt_usd: float = 0.0
    in_doubt: bool = False  # the attempt's request may have reached the provider, no answer yet

    @property
    def charges(self) -> Charges:
        """Everything the line was charged, this run and (for a line resumed) before."""
        return Charges(
            self.carried.cost_usd + self.charged_usd,
            self.carried.unconfirmed_usd + self.unconfirmed_usd,
        )


class JournaledLedger:
    """A `Ledger` that accounts and journals each line's attempts (see the module doc).

    ``remaining_calls`` returns how many calls are still to come, counting the one deciding now;
    ``on_change`` is called whenever money held comes free (a charge, or a line done).
    """

    charges_doubt = True
    """It charges an attempt that got no answer at its worst case itself, on its release (the
    engine then charges no estimate of its own: `tiersel.engine.Engine.charges_doubt`)."""
    stops_when_lost = True
    """A settle or release its store cannot take ends the job (`StoreUnavailable` goes on up),
    rather than being logged while the call goes on, as the engine does for other ledgers."""

    def __init__(
        self,
        inner: Ledger,
        writer: JobWriter,
        *,
        remaining_calls: Callable[[], int] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self._writer = writer
        self._remaining_calls = remaining_calls
        self._on_change = on_change
        self._accounts: dict[str, LineAccount] = {}
        self.held = 0  # envelopes open now, over all lines
        self.overrun_usd = 0.0

    def open(self, call_id: str, line: int, carried: Charges | None = None) -> LineAccount:
        """Start accounting a line's call (before it is sent)."""
        account = LineAccount(call_id, line, carried or Charges())
        self._accounts[call_id] = account
        return account

    def close(self, call_id: str, now: float) -> LineAccount:
        """The line is done: give back its envelope, if the last attempt left one."""
        account = self._accounts.pop(call_id)
        if account.attempt_id is not None:
            raise RuntimeError(f"line {account.line} closed during attempt {account.attempt_id}")
        if account.envelope_id is not None:
            self.inner.release(account.envelope_id, now)
            self._drop_envelope(account)
        return account

    def abandon(self, call_id: str) -> None:
        """Let go of a line's envelope and attempt unsettled, without asking the inner ledger
        (its store does not answer): the journal still shows the attempt open, so a resumed job
        carries it, and the store lets the envelope lapse at its expiry."""
        account = self._account(call_id)
        account.attempt_id = None
        account.in_doubt = False
        if account.envelope_id is not None:
            account.envelope_id = None
            account.envelope_usd = 0.0
            self.held -= 1

    def _account(self, call_id: str) -> LineAccount:
        account = self._accounts.get(call_id)
        if account is None:
            raise KeyError(f"no line is accounted under call id {call_id!r}")
        return account

    # -- the Ledger protocol ---------------------------------------------------------------------

    def state(self, now: float) -> BudgetState:
        return self._state(None, now)

    def state_for(self, call_id: str, now: float) -> BudgetState:
        """The state as the line ``call_id`` sees it: the envelope it holds between attempts
        is its own money to spend, not money reserved by others (the engine asks this way,
        with each call's id, when a ledger offers it)."""
        return self._state(self._accounts.get(call_id), now)

    def account(self, call_id: str) -> LineAccount | None:
        """The open line accounted under ``call_id``, if any."""
        return self._accounts.get(call_id)

    def _state(self, own: LineAccount | None, now: float) -> BudgetState:
        state = self.inner.state(now)
        reserved = state.reserved_usd
        if own is not None and own.envelope_usd > 0 and own.attempt_id is None:
            reserved = max(0.0, reserved - own.envelope_usd)
        remaining = state.remaining_calls
        if self._remaining_calls is not None:
            remaining = max(0, self._remaining_calls())
        return BudgetState(state.limit_usd, state.spent_usd, reserved, remaining, state.overrun_usd)

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None:
        account = self._account(call_id)
        if account.attempt_id is not None:
            raise RuntimeError(f"line {account.line} reserved twice without settling")
        attempt_id = f"{call_id}#{account.attempts + 1}"
        if account.envelope_id is None:
            state = self.inner.reserve(attempt_id, amount_usd, now, ttl_s)
            if state is None:
                return None
            account.envelope_id = attempt_id
            account.envelope_usd = amount_usd
            self.held += 1
        elif amount_usd > account.envelope_usd:
            # Raise the envelope in place: the same id, so it is one atomic re-reservation.
            state = self.inner.reserve(account.envelope_id, amount_usd, now, ttl_s)
            if state is None:
                return None
            account.envelope_usd = amount_usd
        else:
            state = self.inner.state(now)
        account.attempts += 1
        account.attempt_id = attempt_id
        account.attempt_usd = amount_usd
        account.in_doubt = False
        self._writer.record(reserve_record(account.line, attempt_id, amount_usd))
        return state

    def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState:
        account = self._account(call_id)
        attempt_id = account.attempt_id
        if attempt_id is None:
            return self.inner.state(now)  # settled already: settling again charges nothing
        self._writer.record(settle_record(attempt_id, actual_usd))
        account.charged_usd += actual_usd
        over = actual_usd - account.attempt_usd
        if over > _OVERRUN_EPS:
            account.overrun_usd += over
            self.overrun_usd += over
        return self._charge(account, actual_usd, now)

    def release(self, call_id: str, now: float) -> BudgetState:
        account = self._account(call_id)
        attempt_id = account.attempt_id
        if attempt_id is None:
            return self.inner.state(now)
        if account.in_doubt:
            # The request may have been served and billed: charge what it can have cost.
            amount = account.attempt_usd
            self._writer.record(settle_record(attempt_id, amount, unconfirmed=True))
            account.charged_usd += amount
            account.unconfirmed_usd += amount
            return self._charge(account, amount, now)
        # Unbilled: the envelope stays with the line, for its retry.
        self._writer.record(release_record(attempt_id))
        account.attempt_id = None
        account.in_doubt = False
        return self.inner.state(now)

    def _charge(self, account: LineAccount, amount_usd: float, now: float) -> BudgetState:
        assert account.envelope_id is not None
        state = self.inner.settle(account.envelope_id, amount_usd, now)
        account.attempt_id = None
        account.in_doubt = False
        self._drop_envelope(account)
        return state

    def _drop_envelope(self, account: LineAccount) -> None:
        account.envelope_id = None
        account.envelope_usd = 0.0
        self.held -= 1
        if self._on_change is not None:
            self._on_change()

    def __repr__(self) -> str:
        return f"JournaledLedger({self.inner!r}, held={self.held})"
