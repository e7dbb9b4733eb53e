"""Scrubs secret values out of every log record, whatever library or logger writes it.

The CVM client already keeps the SecretKey out of its own messages; this is the second line of
defence for anything else (a library's debug log, an exception's repr) that might echo one. It
runs where each record is made (`install`: the log record factory), not on some handlers, so it
also covers loggers whose records leave the process by other roads, such as kopf's per-object
logger, whose records become Kubernetes Events.

It stays cheap and bounded however many Secrets change: at most `MAX_SECRETS` values are kept
(the least recently registered go first: a Secret changed that often is not holding a live key
for long), and a record is scrubbed by one regular-expression pass, not one pass per secret.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MASK = "***"
MAX_SECRETS = 1024


class Redactor(logging.Filter):
    def __init__(self, max_secrets: int = MAX_SECRETS) -> None:
        super().__init__()
        self._max = max_secrets
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._secrets)

    def add(self, secret: str) -> None:
        if len(secret) < 4:  # masking very short strings would mangle ordinary words
            return
        with self._lock:
            if secret in self._secrets:
                self._secrets.move_to_end(secret)
                return
            self._secrets[secret] = None
            while len(self._secrets) > self._max:
                self._secrets.popitem(last=False)
            # Longest first, so a secret that contains another is masked whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, alternatives)))

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        self.redact(record)
        return True

    def redact(self, record: logging.LogRecord) -> None:
        if self._pattern is None:
            return
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self.scrub(text) != text:
                record.exc_info = None
                record.exc_text = self.scrub(text)

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
