"""`Redactor`: registered secrets are scrubbed from a log record's message, its arguments and its
exception text, through a real logger and handler; strings shorter than 4 are never registered."""

from __future__ import annotations

import base64
import io
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- Cost: registering and scanning stay cheap however many secrets there are -------------------

def _key(n: int) -> str:
    return f"AKs{n:05d}-kT9vR2mQ7xW4pL8sN3bH6jF1"  # 32 characters, as a SecretKey


def test_registering_ten_thousand_secrets_then_more_builds_little() -> None:
    """Each new secret used to recompile one regular expression of every secret (30 ms each at
    1,024, 17 s for the 1,024); then one automaton of all of them was rebuilt every 33 changes (13
    to 19 s for 10,000). Now new secrets become small automata merged by size, so each word is
    rebuilt O(log n) times (under 10 at 16,384), and a log line reads a few automata."""
    from spotpool.controller.redaction import MAX_SECRETS, PENDING

    redactor = Redactor()
    started = time.process_time()
    for n in range(MAX_SECRETS):
        redactor.add(_key(n))
    assert redactor.built_words <= 12 * MAX_SECRETS, redactor.built_words / MAX_SECRETS
    assert len(redactor._levels) <= 8
    before = redactor.built_words
    for n in range(MAX_SECRETS, MAX_SECRETS + PENDING):  # at capacity: each evicts the oldest
        redactor.add(_key(n))
    assert redactor.built_words - before <= MAX_SECRETS // 2
    registering = time.process_time() - started
    line = "pool team-a/gpu: bought 3 instances in ap-guangzhou-3 at 0.12/h; ins-abc123 ins-def456 " * 3
    started = time.process_time()
    for _ in range(2000):
        assert redactor.scrub(line) == line
    scanning = time.process_time() - started
    assert len(redactor) == MAX_SECRETS
    assert redactor.scrub(f"a {_key(MAX_SECRETS + PENDING - 1)} b {_key(0)}") == f"a {MASK} b {_key(0)}"
    # Generous bounds (CPU time of this process, not wall time): this takes about 0.4 s and 0.05 s
    # on the 2-core test machine.
    assert registering < 4.0, registering
    assert scanning < 0.5, scanning


def test_a_secret_seen_again_costs_no_build() -> None:
    redactor = Redactor()
    for n in range(200):
        redactor.add(_key(n))
    builds = redactor.builds
    for _ in range(100):
        for n in range(200):
            redactor.add(_key(n))  # every pass registers its pool's key again
    assert redactor.builds == builds


_ALPHABET = "ab"


@given(
    operations=st.lists(st.text(_ALPHABET, min_size=1, max_size=9), max_size=40),
    texts=st.lists(st.text(_ALPHABET + "x", max_size=40), min_size=1, max_size=5),
    max_secrets=st.integers(1, 12),
    pending=st.integers(0, 4),
)
@settings(max_examples=400, deadline=None)
def test_masks_exactly_what_one_regular_expression_of_the_secrets_would(
    operations: list[str], texts: list[str], max_secrets: int, pending: int
) -> None:
    """The semantics of the regular expression it replaced, longest alternative first, over secrets
    that overlap, contain and repeat each other; whatever mix of automaton, pending and forgotten
    secrets the registrations leave (small `pending` and `max_secrets` force rebuilds, evictions)."""
    redactor = Redactor(max_secrets=max_secrets, pending=pending)
    kept: OrderedDict[str, None] = OrderedDict()  # the model: least recently registered first
    for secret in operations:
        redactor.add(secret)
        if len(secret) < 4:
            continue
        kept[secret] = None
        kept.move_to_end(secret)
        while len(kept) > max_secrets:
            kept.popitem(last=False)
        assert len(redactor) == len(kept)
        for text in texts:
            assert redactor.scrub(text) == _reference(kept, text)


def _reference(secrets: Iterable[str], text: str) -> str:
    ordered = sorted(secrets, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, ordered)), MASK, text) if ordered else text


def test_the_same_semantics_on_unicode_text() -> None:
    redactor = Redactor(pending=0)
    for secret in ("пароль-1234", "密钥密钥密钥", "😀abc1", "abc1😀"):
        redactor.add(secret)
    text = "x пароль-1234 😀abc1😀 密钥密钥密钥密钥 y"
    assert redactor.scrub(text) == _reference(["пароль-1234", "密钥密钥密钥", "😀abc1", "abc1😀"], text)
    assert redactor.scrub(text) == f"x {MASK} {MASK}😀 {MASK}密钥 y"


# --- Forgetting: a rotated or deleted Secret's old value leaves -----------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OLD, NEW, TOKEN = "oldSecretKey-00000000", "newSecretKey-11111111", "sessionToken-22222222"


def test_a_rotated_value_stays_masked_for_a_while_then_is_forgotten() -> None:
    clock = Clock()
    redactor = Redactor(retire_after=600, clock=clock)
    redactor.hold(("team", "cvm"), [OLD, TOKEN])
    clock.now += 3600
    redactor.hold(("team", "cvm"), [OLD, TOKEN])  # held all along: never retired
    assert redactor.scrub(f"{OLD} {TOKEN}") == f"{MASK} {MASK}"
    redactor.hold(("team", "cvm"), [NEW])  # rotated, and the token dropped
    clock.now += 599
    redactor.hold(("team", "cvm"), [NEW])
    assert redactor.scrub(f"{OLD} {NEW} {TOKEN}") == f"{MASK} {MASK} {MASK}"  # a late line of the old key
    clock.now += 1
    redactor.hold(("team", "cvm"), [NEW])
    assert redactor.scrub(f"{OLD} {NEW} {TOKEN}") == f"{OLD} {MASK} {TOKEN}"
    assert len(redactor) == 1


def test_a_value_another_secret_holds_is_not_forgotten() -> None:
    clock = Clock()
    redactor = Redactor(retire_after=0, clock=clock)
    redactor.hold(("team-a", "cvm"), [OLD])
    redactor.hold(("team-b", "cvm"), [OLD])  # the same key pair in two namespaces
    redactor.hold(("team-a", "cvm"), ())
    assert redactor.scrub(OLD) == MASK
    redactor.hold(("team-b", "cvm"), [NEW])
    assert redactor.scrub(f"{OLD} {NEW}") == f"{OLD} {MASK}"


def test_a_retired_value_held_again_is_kept() -> None:
    clock = Clock()
    redactor = Redactor(retire_after=10, clock=clock)
    redactor.hold(("team", "cvm"), [OLD])
    redactor.hold(("team", "cvm"), ())  # the Secret was briefly gone
    redactor.hold(("team", "cvm"), [OLD])  # and is back
    clock.now += 100
    redactor.hold(("other", "cvm"), [NEW])
    assert redactor.scrub(OLD) == MASK


def test_owners_are_bounded_too() -> None:
    redactor = Redactor(max_secrets=4, retire_after=0)
    for n in range(10):
        redactor.hold(("team", f"cvm-{n}"), [_key(n)])
    assert len(redactor) == 4
    assert redactor.scrub(_key(9)) == MASK and redactor.scrub(_key(5)) == _key(5)


def test_a_forgotten_value_leaves_the_automaton_at_the_next_build() -> None:
    redactor = Redactor(pending=2, retire_after=0)
    for n in range(3):
        redactor.hold(("team", f"cvm-{n}"), [_key(n)])
    assert redactor.builds == 1  # the three are in an automaton now
    redactor.hold(("team", "cvm-0"), ())
    assert redactor.scrub(_key(0)) == _key(0)  # forgotten at once, though still in the automaton
    for n in (1, 2):
        redactor.hold(("team", f"cvm-{n}"), ())
    assert len(redactor) == 0 and redactor.scrub(_key(1)) == _key(1)
    assert redactor._levels == []  # nothing masked: no automaton holds a forgotten value


class _Secrets:
    """KubeApi's read_secret, and what SecretGuard.release asks."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}

    def put(self, key: str, token: str | None = None) -> None:
        values = {"secretId": "AKIDtest", "secretKey": key, **({"token": token} if token else {})}
        self.data[("team", "cvm")] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.data.get((namespace, name))

    async def environments_naming_secret(self, namespace: str, name: str) -> list[str]:
        return ["uid-1"]

    async def remove_secret_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        return True


@pytest.fixture
def operator_redactor(monkeypatch: pytest.MonkeyPatch) -> tuple[Redactor, Clock]:
    from spotpool.controller import credentials

    clock = Clock()
    redactor = Redactor(retire_after=600, clock=clock)
    monkeypatch.setattr(credentials, "REDACTOR", redactor)
    return redactor, clock


async def test_loading_a_rotated_secret_forgets_its_old_value(operator_redactor: tuple[Redactor, Clock]) -> None:
    from spotpool.controller.credentials import load_credentials

    redactor, clock = operator_redactor
    kube = _Secrets()
    kube.put(OLD, TOKEN)
    await load_credentials(kube, "team", "cvm")  # type: ignore[arg-type]
    kube.put(NEW)  # rotated; the token dropped
    await load_credentials(kube, "team", "cvm")  # type: ignore[arg-type]
    assert redactor.scrub(f"{OLD} {TOKEN} {NEW}") == f"{MASK} {MASK} {MASK}"
    clock.now += 600
    await load_credentials(kube, "team", "cvm")  # type: ignore[arg-type]  # the next pass
    assert redactor.scrub(f"{OLD} {TOKEN} {NEW}") == f"{OLD} {TOKEN} {MASK}"


async def test_a_deleted_secret_is_forgotten(operator_redactor: tuple[Redactor, Clock]) -> None:
    from spotpool.controller.credentials import CredentialsError, load_credentials

    redactor, clock = operator_redactor
    kube = _Secrets()
    kube.put(OLD)
    await load_credentials(kube, "team", "cvm")  # type: ignore[arg-type]
    del kube.data[("team", "cvm")]
    with pytest.raises(CredentialsError):
        await load_credentials(kube, "team", "cvm")  # type: ignore[arg-type]
    assert redactor.scrub(OLD) == MASK
    clock.now += 600
    redactor.add(NEW)  # any later registration
    assert redactor.scrub(OLD) == OLD


async def test_a_secret_no_pool_needs_any_more_is_forgotten(operator_redactor: tuple[Redactor, Clock]) -> None:
    from spotpool.controller.credentials import SecretGuard, load_credentials

    redactor, clock = operator_redactor
    kube = _Secrets()
    kube.put(OLD)
    await load_credentials(kube, "team", "cvm")  # type: ignore[arg-type]
    await SecretGuard(kube).release("team", "cvm", leaving_uid="uid-1")  # type: ignore[arg-type]
    clock.now += 600
    redactor.add(NEW)
    assert redactor.scrub(OLD) == OLD
