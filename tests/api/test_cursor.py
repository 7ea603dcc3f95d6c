"""Keyset cursors: every id the event schema allows round-trips, and the API takes back every
cursor it hands out; anything else is a 400, never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.api.app import create_app
from pipeline.api.auth import KeyStore
from pipeline.api.store_access import decode_cursor, encode_cursor
from pipeline.store.writer import CdrWriter
from tests.api.conftest import Env, auth
from tests.api.dataset import fixed_cdrs

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "common.schema.json"
ID_SCHEMA = json.loads(SCHEMA.read_text(encoding="utf-8"))["definitions"]["id"]
MIN_ID, MAX_ID = ID_SCHEMA["minLength"], ID_SCHEMA["maxLength"]

CJK_ID = "中" * MAX_ID  # 3 UTF-8 bytes a character
ASTRAL_ID = "\U0001f600" * MAX_ID  # 4 bytes a character: the longest id there is
T0 = datetime(2000, 1, 1, tzinfo=UTC)
T1 = datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


def declared_cursor_max_length(app: FastAPI) -> int:
    """The maxLength the list route declares for its `cursor` query parameter."""
    params = app.openapi()["paths"]["/api/v1/cdrs"]["get"]["parameters"]
    (schema,) = (p["schema"] for p in params if p["name"] == "cursor")
    (limit,) = (s["maxLength"] for s in schema.get("anyOf", [schema]) if "maxLength" in s)
    return limit


@pytest.fixture(scope="module")
def cursor_limit(tmp_path_factory: pytest.TempPathFactory) -> int:
    keys = KeyStore(tmp_path_factory.mktemp("cursor") / "keys.json")
    return declared_cursor_max_length(create_app(lambda: None, keys))  # type: ignore[arg-type]


ids = st.one_of(
    st.text(min_size=MIN_ID, max_size=MAX_ID),
    st.text(st.characters(min_codepoint=0x10000), min_size=MIN_ID, max_size=MAX_ID),
    st.text(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
        min_size=MAX_ID - 8,
        max_size=MAX_ID,
    ),
)
times = st.datetimes(
    min_value=T0.replace(tzinfo=None), max_value=T1.replace(tzinfo=None), timezones=st.just(UTC)
)


@settings(max_examples=400, deadline=None)
@given(start=times, call_id=ids)
@example(start=T1, call_id=ASTRAL_ID)
@example(start=T0, call_id=CJK_ID)
@example(start=T0, call_id="\x00")
@example(start=T1, call_id=".")
def test_cursor_round_trips_every_schema_id(cursor_limit: int, start: datetime, call_id: str):
    assert MIN_ID <= len(call_id) <= MAX_ID
    cursor = encode_cursor(start, call_id)
    assert decode_cursor(cursor) == (start, call_id)
    assert len(cursor) <= cursor_limit
    assert cursor.isascii() and "=" not in cursor  # safe in a query string as it is


def test_the_longest_cursor_fits_the_declared_limit(cursor_limit: int):
    longest = encode_cursor(T1, ASTRAL_ID)
    assert len(longest) <= cursor_limit
    assert len(encode_cursor(T0, CJK_ID)) <= cursor_limit


@settings(max_examples=400, deadline=None)
@given(
    call_id=ids,
    start=times,
    cut=st.integers(min_value=0, max_value=800),
    junk=st.text(max_size=8),
)
def test_a_tampered_cursor_is_a_value_error_or_itself(
    call_id: str, start: datetime, cut: int, junk: str
):
    """Decoding either refuses with ValueError or gives back exactly what was encoded:
    no other exception, no second spelling of the same cursor."""
    cursor = encode_cursor(start, call_id)
    for tampered in (cursor[:cut] + junk, junk + cursor[cut:], cursor[:cut] + junk + cursor[cut:]):
        try:
            got = decode_cursor(tampered)
        except ValueError:
            continue
        assert encode_cursor(*got) == tampered


@pytest.mark.parametrize(
    "text",
    [
        "",
        "!!!!",
        "a",
        "A" * 10_000,
        "é" * 12,
        base64.urlsafe_b64encode(b"12345.x").decode(),
        base64.urlsafe_b64encode(b"\x00" * 8).decode().rstrip("="),  # no id
        base64.urlsafe_b64encode(b"\x00" * 8 + b"\xff\xfe").decode().rstrip("="),  # not UTF-8
        base64.urlsafe_b64encode(b"\x7f" + b"\xff" * 7 + b"x").decode().rstrip("="),  # year 292k
    ],
)
def test_malformed_cursors_are_refused(text: str):
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(text)


# --- through the API: a page ending on a long id continues ------------------------------------

ACCOUNT = "cursor-long-ids"


@pytest.fixture(scope="module")
def long_ids(env: Env) -> Iterator[tuple[dict, list[str]]]:
    """Three CDRs of their own account, 30 days back (outside every other test's window, inside
    the retention), the first two with the longest ids the schema allows."""
    at = datetime.now(UTC).replace(microsecond=123_456) - timedelta(days=30)
    base = fixed_cdrs()[0]
    rows = []
    for i, call_id in enumerate([CJK_ID, ASTRAL_ID, "after-the-long-ones"]):
        shift = at + timedelta(seconds=i) - base.start_time
        rows.append(
            replace(
                base,
                id=call_id,
                account=ACCOUNT,
                start_time=base.start_time + shift,
                connect_time=base.connect_time and base.connect_time + shift,
                end_time=base.end_time + shift,
            )
        )
    CdrWriter(env.client).write(rows)
    params = {
        "direction": "outbound",
        "account": ACCOUNT,
        "from": (at - timedelta(hours=1)).isoformat(),
        "to": (at + timedelta(hours=1)).isoformat(),
    }
    try:
        yield params, [c.id for c in rows]
    finally:
        env.client.command(
            "ALTER TABLE cdr_outbound DELETE WHERE account = {a:String}"
            " SETTINGS mutations_sync = 1",
            parameters={"a": ACCOUNT},
        )


def test_pages_continue_after_the_longest_ids(api, env: Env, long_ids):
    params, want = long_ids
    key = auth(env.keys["admin"])
    got: list[str] = []
    cursors: list[str] = []
    cursor = None
    for _ in range(len(want) + 1):
        r = api.get(
            "/api/v1/cdrs",
            params={**params, "limit": 1, **({"cursor": cursor} if cursor else {})},
            headers=key,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        got += [c["id"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert got == want
    assert len(cursors) == 2 and len(cursors[1]) == len(encode_cursor(T1, ASTRAL_ID))


def test_a_cursor_of_the_worst_case_length_is_not_refused_for_its_length(api, env: Env):
    cursor = encode_cursor(env.window[0], ASTRAL_ID)
    r = api.get(
        "/api/v1/cdrs",
        params=env.params(direction="outbound", limit=1, cursor=cursor),
        headers=auth(env.keys["admin"]),
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c[:-1],
        lambda c: c + "A",
        lambda c: c + "A" * 5000,
        lambda c: "*" + c[1:],
        lambda c: c + "==",
        lambda c: base64.urlsafe_b64encode(b"\x00" * 8).decode(),
    ],
    ids=["cut", "longer", "far-too-long", "not-base64", "padding", "no-id"],
)
def test_a_tampered_cursor_is_a_400(api, env: Env, mutate):
    cursor = mutate(encode_cursor(env.window[0], ASTRAL_ID))
    r = api.get(
        "/api/v1/cdrs",
        params=env.params(direction="outbound", limit=1, cursor=cursor),
        headers=auth(env.keys["admin"]),
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
