"""Who may read /metrics (controller/metricsauth.py), against a fake API server's answers: the
status codes, what is asked, what is cached and for how long, the bounds, and what reaches logs.
The real API server answers the same in tests/integration/test_metrics_auth.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from spotpool.controller.metricsauth import (
    ACCESS_REVIEWS,
    ALLOW_TTL,
    DENY_TTL,
    MAX_TOKEN_LENGTH,
    TOKEN_REVIEWS,
    MetricsAuthorizer,
    Outcome,
    ReviewUnavailable,
    bearer_token,
    require_token,
)

READER = "system:serviceaccount:monitoring:prometheus"
STRANGER = "system:serviceaccount:team:default"


def authenticated(name: str, **user: Any) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "status": {"authenticated": True, "user": {"username": name, **user}}}


class FakeApi:
    """The API server's answers: `tokens` maps a token to its TokenReview answer (absent: not
    authenticated), `allowed` names the users a SubjectAccessReview allows. Records every request."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {
            "reader-token": authenticated(READER, uid="u-1", groups=["system:serviceaccounts"]),
            "stranger-token": authenticated(STRANGER),
        }
        self.allowed = {READER}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.failure: ReviewUnavailable | None = None
        self.access_answer: dict[str, Any] | None = None  # replaces the SubjectAccessReview answer
        self.gate: asyncio.Event | None = None  # when set, requests wait for it
        self.in_flight = self.most_in_flight = 0

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append((path, body))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failure is not None:
                raise self.failure
            if path == TOKEN_REVIEWS:
                return self.tokens.get(body["spec"]["token"], {"status": {"authenticated": False,
                                                                          "error": "invalid bearer token"}})
            assert path == ACCESS_REVIEWS
            if self.access_answer is not None:
                return self.access_answer
            allowed = body["spec"]["user"] in self.allowed
            return {"status": {"allowed": allowed, **({} if allowed else {"reason": "no RBAC policy matched"})}}
        finally:
            self.in_flight -= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authorizer(api: FakeApi, clock: Clock) -> MetricsAuthorizer:
    return MetricsAuthorizer(api, clock=clock)


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token reader-token", "Bearer reader token",
    "Bearer reader-token\x1b[2J", "Bearer réader", "Bearer " + "a" * (MAX_TOKEN_LENGTH + 1), "Bearer ==abc",
])
async def test_a_request_without_a_well_formed_bearer_token_is_401_without_asking(
    authorizer: MetricsAuthorizer, api: FakeApi, header: str | None
) -> None:
    assert (await authorizer.check(header)).outcome is Outcome.UNAUTHENTICATED
    assert api.requests == []


def test_the_bearer_scheme_is_case_insensitive_and_the_token_kept_whole() -> None:
    assert bearer_token("bearer abc.DEF-_~+/==") == "abc.DEF-_~+/=="
    assert bearer_token("BEARER  x ") == "x"


async def test_an_allowed_token_is_200_and_the_reviews_ask_what_the_api_server_needs(
    authorizer: MetricsAuthorizer, api: FakeApi
) -> None:
    api.tokens["reader-token"] = authenticated(
        READER, uid="u-1", groups=["system:serviceaccounts"], extra={"authentication.kubernetes.io/pod-name": ["p"]})
    verdict = await authorizer.check("Bearer reader-token")
    assert verdict.outcome is Outcome.ALLOWED and verdict.user == READER
    (token_path, token_body), (access_path, access_body) = api.requests
    assert token_path == TOKEN_REVIEWS and token_body["kind"] == "TokenReview"
    assert token_body["spec"] == {"token": "reader-token"}  # no audiences: the API server's own
    assert access_path == ACCESS_REVIEWS and access_body["kind"] == "SubjectAccessReview"
    assert access_body["apiVersion"] == "authorization.k8s.io/v1"
    assert access_body["spec"] == {
        "user": READER, "uid": "u-1",
        # system:authenticated added, as the API server's own authenticator does
        "groups": ["system:serviceaccounts", "system:authenticated"],
        "extra": {"authentication.kubernetes.io/pod-name": ["p"]},
        "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
    }


async def test_an_invalid_token_is_401_and_a_token_without_the_permission_403(
    authorizer: MetricsAuthorizer, api: FakeApi
) -> None:
    assert (await authorizer.check("Bearer made-up")).outcome is Outcome.UNAUTHENTICATED
    assert [path for path, _ in api.requests] == [TOKEN_REVIEWS]  # no access review for nobody
    verdict = await authorizer.check("Bearer stranger-token")
    assert verdict.outcome is Outcome.FORBIDDEN and verdict.user == STRANGER


@pytest.mark.parametrize("answer", [
    {"status": {"authenticated": "true", "user": {"username": READER}}},  # not the boolean true
    {"status": {"authenticated": False, "user": {"username": READER}}},
])
async def test_only_authenticated_true_authenticates(
    authorizer: MetricsAuthorizer, api: FakeApi, answer: dict[str, Any]
) -> None:
    api.tokens["reader-token"] = answer
    assert (await authorizer.check("Bearer reader-token")).outcome is Outcome.UNAUTHENTICATED


@pytest.mark.parametrize("status", [{"allowed": "true"}, {"allowed": 1}, {}, {"allowed": False, "denied": False}])
async def test_only_allowed_true_allows(authorizer: MetricsAuthorizer, api: FakeApi, status: dict[str, Any]) -> None:
    api.access_answer = {"status": status}
    assert (await authorizer.check("Bearer reader-token")).outcome is Outcome.FORBIDDEN


async def test_decisions_are_cached_for_their_ttl_by_token(
    authorizer: MetricsAuthorizer, api: FakeApi, clock: Clock
) -> None:
    for _ in range(5):  # a scrape every 15 s within a minute: two API calls, not ten
        assert (await authorizer.check("Bearer reader-token")).outcome is Outcome.ALLOWED
        clock.now += ALLOW_TTL / 5 - 0.1
    assert len(api.requests) == 2
    clock.now += 1
    assert (await authorizer.check("Bearer reader-token")).outcome is Outcome.ALLOWED
    assert len(api.requests) == 4, "asked again once the allowed decision expired"

    api.requests.clear()
    assert (await authorizer.check("Bearer stranger-token")).outcome is Outcome.FORBIDDEN
    assert (await authorizer.check("Bearer made-up")).outcome is Outcome.UNAUTHENTICATED
    assert (await authorizer.check("Bearer stranger-token")).outcome is Outcome.FORBIDDEN
    assert (await authorizer.check("Bearer made-up")).outcome is Outcome.UNAUTHENTICATED
    assert len(api.requests) == 3
    api.allowed.add(STRANGER)  # a binding made: noticed once the refusal expires
    clock.now += DENY_TTL
    assert (await authorizer.check("Bearer stranger-token")).outcome is Outcome.ALLOWED


async def test_the_cache_keeps_at_most_max_entries_dropping_the_least_recently_used(api: FakeApi) -> None:
    authorizer = MetricsAuthorizer(api, max_entries=3)
    for n in range(3):
        await authorizer.check(f"Bearer t{n}")
    await authorizer.check("Bearer t0")  # t0 used again: t1 is now the least recent
    await authorizer.check("Bearer t3")
    api.requests.clear()
    for token in ("t0", "t2", "t3"):
        await authorizer.check(f"Bearer {token}")
    assert api.requests == [], "the three most recent are cached"
    await authorizer.check("Bearer t1")
    assert len(api.requests) == 1, "t1 was dropped"


async def test_an_api_failure_is_503_never_cached_and_warned_once_a_minute(
    authorizer: MetricsAuthorizer, api: FakeApi, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    api.failure = ReviewUnavailable("the API server answered 403 Forbidden: tokenreviews is forbidden")
    caplog.set_level(logging.WARNING, "spotpool.controller.metricsauth")
    for _ in range(5):
        assert (await authorizer.check("Bearer reader-token")).outcome is Outcome.UNAVAILABLE
        clock.now += 1
    assert len(api.requests) == 5, "a failure is not cached"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "403 Forbidden" in warnings[0], warnings
    clock.now += 60
    await authorizer.check("Bearer reader-token")
    assert "(4 more since the last warning)" in caplog.records[-1].getMessage()
    api.failure = None
    assert (await authorizer.check("Bearer reader-token")).outcome is Outcome.ALLOWED


@pytest.mark.parametrize(("answer", "outcome"), [
    ({}, Outcome.UNAVAILABLE),  # no status
    ({"status": {"authenticated": True}}, Outcome.UNAVAILABLE),  # no user
    ({"status": {"authenticated": True, "user": {"username": 42}}}, Outcome.UNAVAILABLE),
    ({"status": {"authenticated": True, "user": {"username": ""}}}, Outcome.UNAVAILABLE),
    ({"status": {"authenticated": True, "user": {"username": "x" * 2000}}}, Outcome.UNAVAILABLE),
    ({"status": {"authenticated": True, "user": {"username": "u", "groups": ["g"] * 257}}}, Outcome.UNAVAILABLE),
    ({"status": {"authenticated": True, "user": {"username": "u", "groups": "system:masters"}}}, Outcome.UNAVAILABLE),
    ({"status": {"authenticated": True, "user": {"username": "u", "extra": {"k": "v"}}}}, Outcome.UNAVAILABLE),
    ({"status": {"authenticated": True, "user": {"username": "u", "uid": ["x"]}}}, Outcome.UNAVAILABLE),
])
async def test_a_token_review_answer_out_of_shape_is_503_not_a_guess(
    authorizer: MetricsAuthorizer, api: FakeApi, answer: dict[str, Any], outcome: Outcome
) -> None:
    api.tokens["odd"] = answer
    assert (await authorizer.check("Bearer odd")).outcome is outcome
    assert [path for path, _ in api.requests] == [TOKEN_REVIEWS]


async def test_what_the_api_server_says_reaches_logs_cleaned_and_clipped(
    authorizer: MetricsAuthorizer, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = "evil\x1b[2J\nforged log line\u202e" + "x" * 900  # within the bounds on a user name
    api.tokens["odd"] = authenticated(hostile)
    api.access_answer = {"status": {"allowed": False, "reason": hostile + "y" * 10_000}}
    caplog.set_level(logging.DEBUG, "spotpool.controller.metricsauth")
    verdict = await authorizer.check("Bearer odd")
    assert verdict.outcome is Outcome.FORBIDDEN
    assert len(verdict.user) <= 128 and "\x1b" not in verdict.user and "\n" not in verdict.user
    assert api.requests[1][1]["spec"]["user"] == hostile, "the review itself gets the name verbatim"
    for record in caplog.records:
        line = record.getMessage()
        assert len(line) < 600, len(line)
        assert not any(ch in line for ch in "\x1b\n\r\u202e"), repr(line)


async def test_reviews_run_at_most_max_in_flight_and_beyond_max_waiting_the_answer_is_503(api: FakeApi) -> None:
    authorizer = MetricsAuthorizer(api, max_in_flight=2, max_waiting=3)
    api.gate = asyncio.Event()
    checks = [asyncio.ensure_future(authorizer.check(f"Bearer flood-{n}")) for n in range(3)]
    while len(api.requests) < 2:
        await asyncio.sleep(0)
    assert (await authorizer.check("Bearer flood-late")).outcome is Outcome.UNAVAILABLE  # 3 already wait
    api.gate.set()
    assert [(await c).outcome for c in checks] == [Outcome.UNAUTHENTICATED] * 3
    assert api.most_in_flight == 2


async def test_one_token_checked_by_many_requests_at_once_is_reviewed_once(api: FakeApi) -> None:
    authorizer = MetricsAuthorizer(api, max_in_flight=1)
    api.gate = asyncio.Event()
    checks = [asyncio.ensure_future(authorizer.check("Bearer reader-token")) for _ in range(5)]
    while not api.requests:
        await asyncio.sleep(0)
    api.gate.set()
    assert {(await c).outcome for c in checks} == {Outcome.ALLOWED}
    assert len(api.requests) == 2


async def test_the_middleware_answers_401_403_503_and_serves_only_the_allowed(api: FakeApi) -> None:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="spotpool_build_info 1\n")

    app = web.Application(middlewares=[require_token(MetricsAuthorizer(api))])
    app.router.add_get("/metrics", metrics)
    async with TestClient(TestServer(app)) as client:
        anonymous = await client.get("/metrics")
        assert anonymous.status == 401
        assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="spotpool-metrics"'
        assert "spotpool_" not in await anonymous.text()
        assert (await client.get("/anything-else")).status == 401, "no route is revealed to the unauthenticated"
        assert (await client.get("/metrics", headers={"Authorization": "Bearer made-up"})).status == 401
        stranger = await client.get("/metrics", headers={"Authorization": "Bearer stranger-token"})
        assert stranger.status == 403 and STRANGER in await stranger.text()
        reader = await client.get("/metrics", headers={"Authorization": "Bearer reader-token"})
        assert reader.status == 200 and await reader.text() == "spotpool_build_info 1\n"
        assert (await client.get("/other", headers={"Authorization": "Bearer reader-token"})).status == 404
        api.failure = ReviewUnavailable("down")
        assert (await client.get("/metrics", headers={"Authorization": "Bearer new-token"})).status == 503
