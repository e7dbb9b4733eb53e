"""Scrubs secret values out of every log record, whatever library writes it.

The CVM client already keeps the SecretKey out of its own messages; this filter is the second line
of defence for anything else (a library's debug log, an exception's repr) that might echo one.
"""

from __future__ import annotations

import logging
import threading

MASK = "***"


class Redactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        if len(secret) >= 4:  # masking very short strings would mangle ordinary words
            with self._lock:
                self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self.scrub(text) != text:
                record.exc_info = None
                record.exc_text = self.scrub(text)
        return True


REDACTOR = Redactor()
