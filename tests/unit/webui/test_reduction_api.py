"""The API's writes: no token configured is 403 saying how to set one; the reduction control's rules."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.config import load_settings
from edge.errors import ConfigError, Refused
from edge.reduction_control import ReductionControl
from webui import create_app


class View:
    def status(self) -> dict[str, Any]:
        return {}

    def runs(self) -> list[dict[str, Any]]:
        return []

    def newest_runs(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self.runs(), key=lambda row: row.get("started_at") or 0.0, reverse=True)[:limit]

    def run(self, run_uid: str) -> dict[str, Any]:
        return {}

    def latest_profile(self) -> None:
        return None

    def latest_preview(self) -> None:
        return None

    def product(self) -> None:
        return None


def test_without_a_token_writes_are_403_and_say_how_to_enable_them() -> None:
    settings = load_settings()
    control = ReductionControl(settings.reduction, open_run=lambda: None)
    client = TestClient(create_app(settings, View(), reduction=control))
    answer = client.put("/api/reduction", json={"mode": "raw"})
    assert answer.status_code == 403 and "api.token" in answer.json()["detail"]
    assert control.parameters()["mode"] == "powder"  # unchanged
    assert client.get("/api/reduction").json()["mode"] == "powder"
    assert client.get("/api/product").status_code == 404


def test_reduction_control_refuses_during_a_run_and_names_bad_keys() -> None:
    open_run: list[str | None] = [None]
    control = ReductionControl(load_settings().reduction, open_run=lambda: open_run[0])
    assert control.update({"mode": "tomo", "tomo": {"slices": [3]}})["tomo"]["slices"] == [3]
    assert control.check_mode("raw") is None and "not one of" in str(control.check_mode("mx"))
    with pytest.raises(ConfigError, match=r"reduction\.serial\.min_peaks"):
        control.update({"serial": {"min_peaks": -1}})
    with pytest.raises(ConfigError, match=r"reduction\.cake_bins = True: .*not true/false"):
        control.update({"cake_bins": True})  # a boolean is no number (not 1)
    # nor inside a list (an outside probe: ROI boxes and slices took true as 1 and false as 0)
    with pytest.raises(ConfigError, match=r"reduction\.roi = .*not true/false"):
        control.update({"roi": [[True, 5, 0, 5]]})
    with pytest.raises(ConfigError, match=r"reduction\.tomo\.slices = .*not true/false"):
        control.update({"tomo": {"slices": [False]}})
    open_run[0] = "run-7"
    with pytest.raises(Refused, match="run run-7 is open"):
        control.update({"mode": "raw"})
    assert "run run-7 is open" in str(control.check_mode("raw"))
    assert control.current().mode == "tomo"


def test_each_accepted_change_is_told_to_the_daemon_and_a_refused_one_is_not() -> None:
    """The daemon loads the next run's kernels when the mode changes (edge.appliance), so it is told
    every accepted change with the new parameters, and nothing when a change is refused."""
    told: list[str] = []
    open_run: list[str | None] = [None]
    control = ReductionControl(
        load_settings().reduction, open_run=lambda: open_run[0], on_change=lambda p: told.append(p.mode)
    )
    control.update({"mode": "serial"})
    with pytest.raises(ConfigError):
        control.update({"mode": "saxs"})
    open_run[0] = "run-1"
    with pytest.raises(Refused):
        control.update({"mode": "tomo"})
    assert told == ["serial"]


def test_a_write_without_the_header_is_told_so_and_a_wrong_token_is_told_that() -> None:
    settings = load_settings(overrides=['api.token="s3cret"'])
    control = ReductionControl(settings.reduction, open_run=lambda: None)
    client = TestClient(create_app(settings, View(), reduction=control))
    missing = client.put("/api/reduction", json={"mode": "raw"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["detail"].endswith("no Authorization header was sent")
    wrong = client.put("/api/reduction", json={"mode": "raw"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"].endswith("the token given is wrong")
    basic = client.put("/api/reduction", json={"mode": "raw"}, headers={"Authorization": "Basic czNjcmV0"})
    assert basic.status_code == 401 and basic.json()["detail"].endswith("scheme is 'Basic', not Bearer")
    # the header's text is never echoed unless it is a known scheme: it may be the token itself (a
    # re-probe: "Authorization: s3cret" was answered "the header's scheme is 's3cret', not Bearer")
    for sent in ("s3cret", "Xs3cret s3cret", "Bearer"):
        bare = client.put("/api/reduction", json={"mode": "raw"}, headers={"Authorization": sent})
        assert bare.status_code == 401 and "s3cret" not in bare.text, bare.text
    # two headers: neither counts, whichever comes first (the first used to win)
    for pair in ((b"Bearer s3cret", b"Bearer nope"), (b"Bearer nope", b"Bearer s3cret")):
        both = client.put(
            "/api/reduction",
            json={"mode": "raw"},
            headers=[(b"authorization", pair[0]), (b"authorization", pair[1])],
        )
        assert both.status_code == 401 and "2 Authorization headers" in both.json()["detail"]
    # the scheme alone: the token is what is missing (an outside probe was told "not a scheme and a token")
    alone = client.put("/api/reduction", json={"mode": "raw"}, headers={"Authorization": "Bearer"})
    assert alone.status_code == 401 and alone.json()["detail"].endswith("no token follows 'Bearer'")
    tabbed = client.put("/api/reduction", json={"mode": "raw"}, headers={"Authorization": "Bearer\ts3cret"})
    assert tabbed.status_code == 200
    auth = {"Authorization": "Bearer s3cret"}
    empty = client.put("/api/reduction", json={"": 1}, headers=auth)
    assert empty.status_code == 400 and empty.json()["detail"].startswith('"" is no reduction parameter')
    ok = client.put("/api/reduction", json={"mode": "raw"}, headers={"Authorization": "bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["mode"] == "raw"  # the scheme's case does not matter


def test_roi_boxes_and_tomo_rows_outside_the_frame_are_refused_as_the_pvs_refuse_them() -> None:
    settings = load_settings(overrides=['api.token="s3cret"'])
    control = ReductionControl(settings.reduction, open_run=lambda: None, frame_shape=(64, 48))
    client = TestClient(create_app(settings, View(), reduction=control))
    auth = {"Authorization": "Bearer s3cret"}
    for change, key in (
        ({"tomo": {"slices": [10, 64]}}, "reduction.tomo.slices row 64 is not in 0..63"),
        ({"tomo": {"slices": [-1]}}, "reduction.tomo.slices row -1"),
        ({"roi": [[0, 10, 0, 49]]}, "reduction.roi box [0, 10, 0, 49] is not inside the 64x48 frame"),
        ({"roi": [[10, 5, 0, 8]]}, "reduction.roi box [10, 5, 0, 8]"),  # an empty box
        # thousands of rows (each a sinogram row per projection: memory without bound) are refused
        ({"tomo": {"slices": [5] * 20_000}}, "at most 128"),
        # a peak finder that could not start: the next run was reduced as raw with no alarm (an outside
        # probe); refused here as in a settings file
        ({"serial": {"min_pixels": 300, "max_pixels": 2}}, "min_pixels 300 is above max_pixels 2"),
        ({"serial": {"min_pixels": 300}}, "min_pixels 300 is above max_pixels 200"),
    ):
        answer = client.put("/api/reduction", json=change, headers=auth)
        assert answer.status_code == 400 and key in answer.json()["detail"], (change, answer.json())
    assert control.changes == 0 and control.parameters()["tomo"]["slices"] == []  # nothing applied
    inside = {"roi": [[0, 64, 0, 48]], "tomo": {"slices": [0, 63]}}
    assert client.put("/api/reduction", json=inside, headers=auth).status_code == 200


def test_a_settings_file_box_or_row_outside_the_frame_is_a_failed_start() -> None:
    """The same rule for the settings file's own parameters: a clear error when the daemon starts (it
    was a run of raw frames, counted only in pipeline.mode_setup_errors)."""
    for override, words in (
        ("reduction.tomo.slices=[70]", "reduction.tomo.slices row 70 is not in 0..63"),
        (
            "reduction.roi=[[0, 10, 40, 50]]",
            "reduction.roi box [0, 10, 40, 50] is not inside the 64x48 frame",
        ),
    ):
        settings = load_settings(overrides=[override])
        with pytest.raises(ConfigError, match=re.escape(words)):
            ReductionControl(settings.reduction, open_run=lambda: None, frame_shape=(64, 48))
    fine = load_settings(overrides=["reduction.tomo.slices=[63]", "reduction.roi=[[0, 64, 0, 48]]"])
    ReductionControl(fine.reduction, open_run=lambda: None, frame_shape=(64, 48))


def test_the_token_is_checked_before_the_body_is_read_and_the_body_is_bounded() -> None:
    """Found by a client written from docs/api.md alone: a malformed body without a token was answered
    422 (parsed first), any size was parsed, and 1e999 or Infinity became an accepted threshold."""
    settings = load_settings(overrides=['api.token="s3cret"'])
    control = ReductionControl(settings.reduction, open_run=lambda: None)
    client = TestClient(create_app(settings, View(), reduction=control))
    json_type = {"Content-Type": "application/json"}
    auth = {"Authorization": "Bearer s3cret", **json_type}
    for headers in (json_type, {**json_type, "Authorization": "Bearer nope"}):
        for body in (b"{not json", b"\xff\xfe", b"[" * 100_000):
            assert client.put("/api/reduction", content=body, headers=headers).status_code == 401
    closed = TestClient(create_app(load_settings(), View(), reduction=control))
    assert closed.put("/api/reduction", content=b"{not json", headers=json_type).status_code == 403
    for body, words in (
        (b"{not json", "body: not JSON"),
        (b'{"mode": "\xff"}', "body: not JSON (UnicodeDecodeError"),
        (b"[" * 60_000, "body: not JSON (RecursionError: nested deeper than the reader follows)"),
        # Python's own words were advice about its interpreter ("use sys.set_int_max_str_digits()")
        (b'{"x": ' + b"9" * 5000 + b"}", "an integer of 5000 digits, more than any setting holds"),
        (b'{"x": -' + b"9" * 101 + b"}", "an integer of 101 digits"),
        (b"[]", "body: a JSON object is needed, not list"),
        (b'{"serial": {"adc_threshold": Infinity}}', "Infinity is not a JSON number"),
        (b'{"serial": {"adc_threshold": 1e999}}', "1e999 is beyond a double"),
        # half a surrogate pair: no UTF-8 text (an outside probe's upstream twin crashed the forwarder)
        (b'{"\\ud800": 1}', "lone UTF-16 surrogate"),
        (b'{"tomo": {"filter": "ramp\\udfff"}}', "lone UTF-16 surrogate"),
        # a key twice: the last one silently won (an outside probe)
        (b'{"mode": "raw", "mode": "powder"}', "the key 'mode' appears twice"),
        (b'{"serial": {"min_peaks": 3, "min_peaks": 4}}', "the key 'min_peaks' appears twice"),
    ):
        answer = client.put("/api/reduction", content=body, headers=auth)
        assert answer.status_code == 422 and words in answer.json()["detail"], (body[:30], answer.json())
        assert "sys." not in answer.text and "recursion depth" not in answer.text
        assert answer.json()["error"] == "bad_request"
    plain = client.put(
        "/api/reduction", content=b'{"mode": "raw"}', headers={**auth, "Content-Type": "text/plain"}
    )
    assert plain.status_code == 422 and "Content-Type: application/json" in plain.json()["detail"]
    huge = client.put("/api/reduction", content=b'{"x": "' + b"a" * 70_000 + b'"}', headers=auth)
    assert huge.status_code == 413 and huge.json()["error"] == "too_large"
    assert control.changes == 0
    assert (
        client.put("/api/reduction", json={"serial": {"adc_threshold": 12.5}}, headers=auth).status_code
        == 200
    )
    assert client.get("/api/reduction").json()["serial"]["adc_threshold"] == 12.5


def test_an_error_body_stays_within_its_bound_whatever_the_characters() -> None:
    """docs/api.md 1.6: an error body is at most 1024 bytes. An outside probe got 2,211 bytes from a
    key of 500 control characters (each escaped to 6 bytes) and 1,507 from one of 500 emoji."""
    from webui.app import MAX_ERROR_BODY

    settings = load_settings(overrides=['api.token="s3cret"'])
    client = TestClient(
        create_app(settings, View(), reduction=ReductionControl(settings.reduction, open_run=lambda: None))
    )
    auth = {"Authorization": "Bearer s3cret"}
    for key in ("\u0001" * 500, "\U0001f600" * 500, "\u00e9" * 500):
        answer = client.put("/api/reduction", json={"serial": {key: 1}}, headers=auth)
        assert answer.status_code == 400 and len(answer.content) <= MAX_ERROR_BODY, len(answer.content)
        assert answer.json()["detail"].endswith("...")


@contextlib.contextmanager
def _served_with_token() -> Iterator[int]:
    """The API (token ``s3cret``) served by a real uvicorn on a loopback port, for raw-socket clients;
    yields the port, stopped at the end."""
    import threading
    import time

    import uvicorn

    from edge.demo import free_port

    settings = load_settings(overrides=['api.token="s3cret"'])
    app = create_app(settings, View(), reduction=ReductionControl(settings.reduction, open_run=lambda: None))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", lifespan="off", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_client_gone_mid_body_is_answered_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """An outside probe: a write whose client closed after part of its body logged uvicorn's
    "Exception in ASGI application" with a 60-line traceback (ClientDisconnect), every time."""
    import socket
    import time

    with _served_with_token() as port:
        with caplog.at_level("ERROR"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(
                    b"PUT /api/reduction HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                    b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"mo'
                )
                time.sleep(0.3)
            time.sleep(0.5)
        assert not [r for r in caplog.records if r.levelname == "ERROR"], [
            r.getMessage() for r in caplog.records
        ]


def test_a_body_declared_over_the_bound_is_refused_at_once_not_waited_for() -> None:
    """An outside probe declared ``Content-Length: 99999999999999999999`` and sent 2 bytes: it waited
    10 s for a 408 "not all sent". The length said is over the bound: 413 at once."""
    import socket

    with _served_with_token() as port:
        for declared in (b"99999999999999999999", b"65537"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(
                    b"PUT /api/reduction HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                    b"Content-Type: application/json\r\nContent-Length: " + declared + b"\r\n\r\n{}"
                )
                answer = b""  # (within the socket's 5 s, not the body's 10 s)
                while not answer.endswith(b"}"):
                    part = sock.recv(4096)
                    if not part:
                        break
                    answer += part
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b'"too_large"' in answer and b"Content-Length " + declared[:24] in answer


def test_a_token_with_spaces_around_it_is_refused_at_the_start() -> None:
    """A token is sent with the spaces around it left out (docs/api.md 1.5), so one of spaces only (an
    outside probe: every write then got 401 "wrong token") or with spaces around it could never match."""
    for token in ("  ", " s3cret", "s3cret\t"):
        with pytest.raises(ConfigError, match=r"api\.token = .*has spaces before or after it"):
            load_settings(overrides=[f"api.token={token!r}".replace("'", '"')])
    assert load_settings(overrides=['api.token="s3 cret"']).api.token == "s3 cret"  # inside: kept


def test_a_token_that_is_not_ascii_is_refused_at_the_start() -> None:
    """A header's non-ASCII bytes come in the client's encoding (curl: UTF-8) and are read as Latin-1:
    "sécret" matched a Latin-1 client only (an outside probe)."""
    with pytest.raises(ConfigError, match=r"api\.token = .*holds 'é', not ASCII"):
        load_settings(overrides=['api.token="sécret"'])
    assert load_settings(overrides=['api.token="s3cret-~!"']).api.token == "s3cret-~!"


def test_every_refused_request_is_counted_by_kind_and_status() -> None:
    """An outside probe: refused writes (a wrong token, a bad body, a change while a run is open) left only
    their replies, no counter. Each 4xx is counted, writes apart from reads, and shown in /metrics."""
    from edge.http_guard import requests_refused
    from webui.metrics import collect_status

    settings = load_settings(overrides=['api.token="s3cret"'])
    open_run: list[str | None] = [None]
    control = ReductionControl(settings.reduction, open_run=lambda: open_run[0])
    client = TestClient(create_app(settings, View(), reduction=control))
    before = requests_refused()
    token = {"Authorization": "Bearer s3cret"}
    assert client.put("/api/reduction", json={"mode": "raw"}).status_code == 401
    assert client.put("/api/reduction", json={"mode": "mx"}, headers=token).status_code == 400
    open_run[0] = "run-1"
    assert client.put("/api/reduction", json={"mode": "raw"}, headers=token).status_code == 409
    assert client.get("/api/no-such-thing").status_code == 404
    assert client.get("/api/reduction").status_code == 200  # (not counted)
    after = requests_refused()

    def added(kind: str, code: str) -> int:
        return after[kind].get(code, 0) - before[kind].get(code, 0)

    assert (added("write", "401"), added("write", "400"), added("write", "409")) == (1, 1, 1)
    assert added("read", "404") == 1 and sum(after["read"].values()) - sum(before["read"].values()) == 1
    samples = {
        (sample.labels["kind"], sample.labels["status"]): sample.value
        for family in collect_status({"appliance": {"api_requests_refused": after}})
        if family.name == "edge_api_requests_refused"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert samples[("write", "409")] == after["write"]["409"]
