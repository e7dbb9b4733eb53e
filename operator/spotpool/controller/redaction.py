"""Scrubs secret values out of every log record, whatever library or logger writes it.

The CVM client already keeps the SecretKey out of its own messages; this is the second line of
defence for anything else (a library's debug log, an exception's repr) that might echo one. It
runs where each record is made (`install`: the log record factory), not on some handlers, so it
also covers loggers whose records leave the process by other roads, such as kopf's per-object
logger, whose records become Kubernetes Events.

It stays cheap and bounded however many Secrets change, because it runs on the event loop that
every pool shares and a tenant may re-apply Secrets in a loop:

- A record is scanned by a few Aho–Corasick automata (`pyahocorasick`, in C) holding the secrets,
  each in time linear in the record's length (plus the matches), and `str.find` for the few
  secrets registered since the last automaton was built (at most `PENDING`).
- Registering a secret costs O(its length): it joins the pending few. When more than `PENDING`
  wait, they become a new small automaton, and automata of similar sizes are merged (each at most
  a quarter of the one before it, as in a log-structured merge): a secret is rebuilt into a larger
  automaton O(log n) times, so registration costs O(log n) amortised, and a scan reads at most
  about log4(n / PENDING) + 2 automata (6 at 10,000 secrets). Forgotten secrets stay in their
  automaton, unmasked, until more than half of all built words are forgotten: then everything is
  rebuilt once (amortised O(1) per forgotten secret). (It used to recompile one regular
  expression of every secret at each new one: 30 ms each at 1,024, and half a millisecond per log
  line; then one automaton of all secrets rebuilt every 33 changes: 13 s to register 10,000.)
- At most `MAX_SECRETS` values are kept, the least recently registered forgotten first.
- A Secret's values are registered under the Secret (`hold`): when it is rotated, or deleted (it
  no longer loads), or no pool needs it any more (`SecretGuard.release`), its old values are kept
  for `RETIRE_AFTER` more seconds (a request or log line of the pass that used them may still be
  on its way), then forgotten, unless another Secret holds the same value. Values of a Secret that
  still exists are the same the operator's watch of Secrets keeps in memory anyway.

What is masked is what a regular expression of every secret, longest first, masks: at the
leftmost place where a secret starts, the longest secret starting there, then on after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import ahocorasick

MASK = "***"
MAX_SECRETS = 16384
"""Values kept; past it the least recently registered is forgotten. Sized for 10,000 pools each with
its own key pair: a value of a Secret still in use is never the one forgotten below that."""

PENDING = 32
"""Secrets registered since the last automaton was built that a scan finds with `str.find`; past
it they become an automaton of their own."""

MERGE_RATIO = 4
"""An automaton is merged into the one before it once it holds a quarter as many words or more."""

RETIRE_AFTER = 600.0
"""Seconds a value stays masked after its Secret let it go (rotated, deleted, no longer needed)."""

MIN_LENGTH = 4
"""Shorter strings are never registered: masking them would mangle ordinary words."""


@dataclass(frozen=True)
class _Scanner:
    """What one scan reads. Never changed once made (a change makes a new one), so a record made in
    another thread (the Kubernetes client's executor) sees one consistent set of secrets."""

    automata: tuple[Any, ...]  # ahocorasick.Automaton, built, each word its own value
    forgotten: frozenset[str]  # words of the automata no longer masked
    pending: tuple[str, ...]  # masked, in no automaton

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Every occurrence (start, end) of every masked secret, overlapping ones included."""
        found: list[tuple[int, int]] = []
        forgotten = self.forgotten
        for automaton in self.automata:
            for end, word in automaton.iter(text):
                if word not in forgotten:
                    found.append((end + 1 - len(word), end + 1))
        for word in self.pending:
            at = text.find(word)
            while at >= 0:
                found.append((at, at + len(word)))
                at = text.find(word, at + 1)
        return found


class Redactor(logging.Filter):
    """`add` masks a value until it is one of the `max_secrets` least recently registered; `hold`
    registers the values of one owner (a Secret) and retires those it held before."""

    def __init__(
        self,
        max_secrets: int = MAX_SECRETS,
        *,
        pending: int = PENDING,
        retire_after: float = RETIRE_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._max = max(1, max_secrets)
        self._pending_max = pending
        self._retire_after = retire_after
        self._clock = clock
        self._lock = threading.Lock()
        self._masked: OrderedDict[str, None] = OrderedDict()  # least recently registered first
        self._levels: list[tuple[Any, frozenset[str]]] = []  # (automaton, its words), largest first
        self._built: set[str] = set()  # the words of every automaton
        self._forgotten: set[str] = set()  # in an automaton, no longer masked
        self._pending: dict[str, None] = {}  # masked, in no automaton
        self._owners: OrderedDict[Hashable, tuple[str, ...]] = OrderedDict()  # least recent first
        self._holders: dict[str, int] = {}  # value -> how many owners hold it
        self._retiring: OrderedDict[str, float] = OrderedDict()  # value -> when it is forgotten
        self._scanner: _Scanner | None = None
        self._changed = False  # the masked set changed since the scanner was made
        self.builds = 0
        """Automata built so far (tests count them)."""
        self.built_words = 0
        """Words put into those automata, added up: the work registration has cost."""

    def __len__(self) -> int:
        return len(self._masked)

    def add(self, secret: str) -> None:
        """Mask `secret` from now on (a value without an owner: it leaves only when it is one of the
        least recently registered past `max_secrets`)."""
        if len(secret) < MIN_LENGTH:
            return
        with self._lock:
            self._retiring.pop(secret, None)
            self._mask(secret)
            self._expire(self._clock())
            self._publish()

    def hold(self, owner: Hashable, values: Iterable[str]) -> None:
        """`owner` (a Secret: (namespace, name)) holds exactly `values` now, each masked from now on.
        Values it held before and no longer does are retired: masked for `retire_after` seconds
        more, unless another owner holds them, then forgotten. `hold(owner, ())` lets all go."""
        kept = tuple(dict.fromkeys(value for value in values if len(value) >= MIN_LENGTH))
        with self._lock:
            now = self._clock()
            before = self._owners.pop(owner, ())
            if kept:
                self._owners[owner] = kept
            for value in kept:
                self._holders[value] = self._holders.get(value, 0) + 1
                self._retiring.pop(value, None)
                self._mask(value)
            for value in before:
                self._let_go(value, now)
            while len(self._owners) > self._max:
                for value in self._owners.popitem(last=False)[1]:
                    self._let_go(value, now)
            self._expire(now)
            self._publish()

    def _mask(self, value: str) -> None:
        if value in self._masked:
            self._masked.move_to_end(value)
            return
        self._masked[value] = None
        self._changed = True
        if value in self._built:
            self._forgotten.discard(value)
        else:
            self._pending[value] = None
        while len(self._masked) > self._max:
            oldest = next(iter(self._masked))
            self._retiring.pop(oldest, None)
            self._forget(oldest)

    def _let_go(self, value: str, now: float) -> None:
        holders = self._holders[value] - 1
        if holders:
            self._holders[value] = holders
            return
        del self._holders[value]
        if value in self._masked:
            self._retiring[value] = now + self._retire_after  # deadlines only grow: oldest first

    def _expire(self, now: float) -> None:
        while self._retiring:
            value, at = next(iter(self._retiring.items()))
            if at > now:
                return
            del self._retiring[value]
            self._forget(value)

    def _forget(self, value: str) -> None:
        del self._masked[value]
        self._changed = True
        if value in self._built:
            self._forgotten.add(value)
        else:
            del self._pending[value]

    def _publish(self) -> None:
        if not self._changed:
            return  # a pass registering its pool's values again: nothing to rebuild or remake
        self._changed = False
        if not self._masked:
            self._levels, self._built = [], set()  # no forgotten value lingers in an automaton
            self._forgotten.clear()
        elif len(self._forgotten) > max(self._pending_max, len(self._built) // 2):
            self._rebuild()
        elif len(self._pending) > self._pending_max:
            self._add_level()
        self._scanner = None if not self._masked else _Scanner(
            tuple(automaton for automaton, _ in self._levels), frozenset(self._forgotten), tuple(self._pending))

    def _add_level(self) -> None:
        """The pending words as an automaton of their own; then, while the newest automaton holds
        at least a quarter as many words as the one before it, the two become one."""
        words = frozenset(self._pending)
        self._pending.clear()
        self._built |= words
        while self._levels and len(words) * MERGE_RATIO >= len(self._levels[-1][1]):
            words |= self._levels.pop()[1]
        self._levels.append((self._automaton_of(words), words))

    def _rebuild(self) -> None:
        """Every masked word in one automaton, forgotten ones left out."""
        words = frozenset(self._masked)
        self._levels = [(self._automaton_of(words), words)]
        self._built = set(words)
        self._forgotten.clear()
        self._pending.clear()

    def _automaton_of(self, words: frozenset[str]) -> Any:
        automaton = ahocorasick.Automaton()
        for word in words:
            automaton.add_word(word, word)
        automaton.make_automaton()
        self.builds += 1
        self.built_words += len(words)
        return automaton

    def scrub(self, text: str) -> str:
        """`text` with every masked secret replaced by `MASK`: at the leftmost place where one
        starts, the longest one starting there, then on after it (as a regular expression of every
        secret, longest first, would)."""
        scanner = self._scanner
        if scanner is None:
            return text
        found = scanner.spans(text)
        if not found:
            return text
        found.sort(key=lambda span: (span[0], -span[1]))
        parts: list[str] = []
        done = 0
        for start, end in found:
            if start >= done:
                parts += (text[done:start], MASK)
                done = end
        parts.append(text[done:])
        return "".join(parts)

    def filter(self, record: logging.LogRecord) -> bool:
        self.redact(record)
        return True

    def redact(self, record: logging.LogRecord) -> None:
        if self._scanner is None:
            return
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            scrubbed = self.scrub(text)
            if scrubbed != text:
                record.exc_info = None
                record.exc_text = scrubbed

    def install(self) -> None:
        """Scrub every record the process makes from now on, on every logger (idempotent)."""
        factory = logging.getLogRecordFactory()
        if getattr(factory, "_spotpool_redacting", False):
            return
        redact = self.redact

        def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            redact(record)
            return record

        scrubbing: Callable[..., logging.LogRecord] = make
        scrubbing._spotpool_redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(scrubbing)


class EventText(logging.Formatter):
    """The text of a log record that becomes a Kubernetes Event (kopf's poster): the message alone,
    bounded, with no traceback and no stack. Pool authors read Events; the operator's own log keeps
    the traceback for its administrator."""

    MAX = 1024

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()[: self.MAX]


class _While(logging.Filter):
    def __init__(self, condition: Callable[[], bool]) -> None:
        super().__init__()
        self._condition = condition

    def filter(self, record: logging.LogRecord) -> bool:
        return self._condition()


DELETION_WAITS = "deletion waits: "
"""How the delete handler's retry message starts: kopf logs every retry, and the Event it would
post each time is left to the log; the handler posts one Event when what it waits for changes."""


class _NotRetries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"failed temporarily: {DELETION_WAITS}" not in record.getMessage()


def tracebacks_off_events(logger_name: str = "kopf.objects", *, only_while: Callable[[], bool] | None = None) -> int:
    """Give every handler of kopf's per-object logger that posts Events the `EventText` format, and
    with `only_while` (leadership) let it post only while that holds: a standby must post nothing.
    Returns how many it found (kopf attaches one, `K8sPoster`, at import)."""
    found = 0
    for handler in logging.getLogger(logger_name).handlers:
        if type(handler).__name__ == "K8sPoster":
            handler.setFormatter(EventText())
            handler.addFilter(_NotRetries())
            if only_while is not None:
                handler.addFilter(_While(only_while))
            found += 1
    return found


REDACTOR = Redactor()
