"""`Redactor`: registered secrets are scrubbed from a log record's message, its arguments and its
exception text, through a real logger and handler; strings shorter than 4 are never registered."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from spotpool.controller.redaction import MASK, Redactor

SECRET = "kT9vR2mQ7xW4pL8sN3bH6jF1"


@pytest.fixture
def redactor() -> Redactor:
    return Redactor()


@pytest.fixture
def capture(redactor: Redactor) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler carries the filter, as `configure_logging` installs it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(redactor)
    logger = logging.getLogger(f"test-redaction-{id(redactor)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, out
    logger.removeHandler(handler)


def test_secret_in_the_message_is_masked(redactor: Redactor, capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = capture
    redactor.add(SECRET)
    logger.info(f"signing with {SECRET} now")
    assert out.getvalue() == f"INFO signing with {MASK} now\n"


def test_secret_in_the_arguments_is_masked(redactor: Redactor, capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = capture
    redactor.add(SECRET)
    logger.warning("headers: %s, attempt %d", {"Authorization": f"key={SECRET}"}, 2)
    text = out.getvalue()
    assert SECRET not in text
    assert text == f"WARNING headers: {{'Authorization': 'key={MASK}'}}, attempt 2\n"


def test_secret_in_the_exception_text_is_masked(
    redactor: Redactor, capture: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, out = capture
    redactor.add(SECRET)
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        logger.exception("call failed")
    text = out.getvalue()
    assert SECRET not in text
    assert f"ValueError: bad key {MASK}" in text
    assert "Traceback" in text and text.startswith("ERROR call failed\n")


def test_every_registered_secret_is_masked(redactor: Redactor, capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = capture
    other = "tokenValue-5566778899"
    redactor.add(SECRET)
    redactor.add(other)
    logger.info("%s and %s and %s again", SECRET, other, SECRET)
    assert out.getvalue() == f"INFO {MASK} and {MASK} and {MASK} again\n"


def test_records_without_secrets_are_left_as_they_are(redactor: Redactor) -> None:
    redactor.add(SECRET)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "count %d of %s", (3, "pool"), None)
    assert redactor.filter(record) is True
    assert (record.msg, record.args) == ("count %d of %s", (3, "pool"))
    assert record.getMessage() == "count 3 of pool"


def test_filter_never_drops_a_record(redactor: Redactor) -> None:
    redactor.add(SECRET)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, SECRET, None, None)
    assert redactor.filter(record) is True
    assert record.getMessage() == MASK


@pytest.mark.parametrize("short", ["", "a", "ab", "abc"])
def test_strings_shorter_than_four_are_ignored(
    redactor: Redactor, capture: tuple[logging.Logger, io.StringIO], short: str
) -> None:
    logger, out = capture
    redactor.add(short)
    logger.info("a cab and abc stay readable")
    assert out.getvalue() == "INFO a cab and abc stay readable\n"
    assert redactor.scrub("abc abc") == "abc abc"


def test_a_four_character_secret_is_masked(redactor: Redactor) -> None:
    redactor.add("abcd")
    assert redactor.scrub("xabcdx abcd") == f"x{MASK}x {MASK}"


def test_a_secret_that_changes_many_times_keeps_the_redactor_bounded_and_current() -> None:
    redactor = Redactor(max_secrets=16)
    for n in range(1000):  # a Secret rotated a thousand times
        redactor.add(f"rotated-secret-key-{n:04d}")
    assert len(redactor) == 16
    assert redactor.scrub("key rotated-secret-key-0999 used") == f"key {MASK} used"
    assert redactor.scrub("rotated-secret-key-0983") == "rotated-secret-key-0983"  # long gone
    redactor.add("rotated-secret-key-0990")  # seen again: kept as the most recent
    for n in range(1000, 1015):
        redactor.add(f"rotated-secret-key-{n:04d}")
    assert redactor.scrub("rotated-secret-key-0990") == MASK


def test_a_secret_containing_another_is_masked_whole() -> None:
    redactor = Redactor()
    redactor.add("abcd")
    redactor.add("xxabcdxx")
    assert redactor.scrub("key xxabcdxx") == f"key {MASK}"


def test_installed_it_scrubs_every_logger_whatever_its_handlers() -> None:
    """kopf's per-object logger posts records as Events through its own handler: the scrubbing
    happens where the record is made, so no handler can miss it."""
    redactor = Redactor()
    previous = logging.getLogRecordFactory()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("kopf.objects.test-redaction")
    logger.addHandler(keep := Keep())
    try:
        redactor.install()
        redactor.install()  # idempotent
        redactor.add(SECRET)
        logger.warning("token %s leaked", SECRET)
        try:
            raise RuntimeError(f"failed with {SECRET}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(keep)
    assert seen[0].getMessage() == f"token {MASK} leaked"
    assert seen[1].exc_info is None and SECRET not in (seen[1].exc_text or "") and MASK in (seen[1].exc_text or "")


def test_events_get_the_message_alone_never_a_traceback() -> None:
    """kopf posts its per-object logger's records as Events through its `K8sPoster`; with our
    formatter, an error logged with a traceback becomes a one-line Event."""
    import kopf._core.engines.posting  # noqa: F401 - attaches kopf's poster, as the operator does

    from spotpool.controller.redaction import EventText, tracebacks_off_events

    assert tracebacks_off_events() == 1
    poster = next(h for h in logging.getLogger("kopf.objects").handlers if type(h).__name__ == "K8sPoster")
    assert isinstance(poster.formatter, EventText)
    try:
        raise RuntimeError("inner detail")
    except RuntimeError:
        record = logging.getLogger("test").makeRecord("test", logging.ERROR, __file__, 1, "reconcile failed (%s)",
                                                      ("RuntimeError",), __import__("sys").exc_info())
    text = poster.format(record)
    assert text == "reconcile failed (RuntimeError)" and "Traceback" not in text
    assert len(EventText().format(logging.makeLogRecord({"msg": "x" * 5000}))) == EventText.MAX


def test_a_standby_posts_no_events() -> None:
    """Only the leader speaks for a pool: kopf's poster passes records only while leading."""
    import kopf._core.engines.posting  # noqa: F401 - attaches kopf's poster, as the operator does

    from spotpool.controller.redaction import tracebacks_off_events

    leading = {"now": False}
    poster = next(h for h in logging.getLogger("kopf.objects").handlers if type(h).__name__ == "K8sPoster")
    before = list(poster.filters)
    try:
        tracebacks_off_events(only_while=lambda: leading["now"])
        record = logging.makeLogRecord({"msg": "Handler failed temporarily: not the leader"})
        ours = [f for f in poster.filters if f not in before]
        assert not all(f.filter(record) for f in ours)
        leading["now"] = True
        assert all(f.filter(record) for f in ours)
    finally:
        poster.filters[:] = before


def test_a_deletion_that_waits_posts_its_retries_to_the_log_only() -> None:
    """kopf logs every retry of the delete handler; the handler says what it waits for once, in an
    Event of its own, so the retries do not become one Event each."""
    import kopf._core.engines.posting  # noqa: F401

    from spotpool.controller.redaction import DELETION_WAITS, tracebacks_off_events

    poster = next(h for h in logging.getLogger("kopf.objects").handlers if type(h).__name__ == "K8sPoster")
    before = list(poster.filters)
    try:
        tracebacks_off_events()
        ours = [f for f in poster.filters if f not in before]
        retry = logging.makeLogRecord({"msg": f"Handler 'release_everything' failed temporarily: {DELETION_WAITS}x"})
        other = logging.makeLogRecord({"msg": "Handler 'release_everything' failed temporarily: boom"})
        assert not all(f.filter(retry) for f in ours)
        assert all(f.filter(other) for f in ours)
    finally:
        poster.filters[:] = before
