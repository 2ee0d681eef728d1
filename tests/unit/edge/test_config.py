"""Settings: TOML < environment < CLI precedence, and bad values that name their key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_settings
from edge.errors import ConfigError


def test_defaults_bind_loopback_only() -> None:
    settings = load_settings()
    assert settings.api.host == "127.0.0.1"
    assert "127.0.0.1" in settings.sim.endpoint and "127.0.0.1" in settings.upstream.endpoint


def test_precedence_toml_then_env_then_cli(tmp_path, monkeypatch) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[ring]\nslots = 10\npolicy = "count-and-drop"\n[store]\nframes_per_file = 7\n')
    assert load_settings(config).ring.slots == 10
    monkeypatch.setenv("EDGE_RING__SLOTS", "20")
    settings = load_settings(config)
    assert settings.ring.slots == 20
    assert settings.ring.policy == "count-and-drop"  # untouched keys keep the file's value
    settings = load_settings(config, ["ring.slots=30"])
    assert (settings.ring.slots, settings.ring.policy, settings.store.frames_per_file) == (
        30,
        "count-and-drop",
        7,
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("ring.slots=1", "ring.slots"),
        ("store.frames_per_file=abc", "store.frames_per_file"),
        ('ring.policy="sometimes"', "ring.policy"),
        ("api.port=70000", "api.port"),
        ("ring.bogus=1", "ring.bogus"),
        ("detector.height=true", "detector.height"),  # not 1
        ("geometry.dist=false", "geometry.dist"),
        ("geometry.pixel1=5", "geometry.pixel1"),  # 5 m pixels: 1e300 would overflow the axes
        ("geometry.poni1=5000", "geometry.poni1"),
        ("geometry.dist=1e-300", "geometry.dist"),  # every pixel at 2theta = 90 degrees
        ("geometry.wavelength=1e-20", "geometry.wavelength"),
        ("geometry.rot1=100", "geometry.rot1"),  # radians: more than a turn
        ("stream.rcvhwm=2147483648", "stream.rcvhwm"),  # beyond ZeroMQ's C int: a reader that died
        ("udp.rcvbuf_bytes=2147483648", "udp.rcvbuf_bytes"),
        ("retention.interval_seconds=100000", "retention.interval_seconds"),  # (1e300 overflowed a wait)
        ('ledger.path=""', "ledger.path"),  # "" is ".", a directory: not a ledger file
        ('ring.name="a/b"', "ring.name"),
    ],
)
def test_bad_value_names_key_and_value(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(overrides=[override])
    message = str(error.value)
    assert key in message
    assert override.split("=", 1)[1].strip('"') in message


def test_bad_env_value_names_key(monkeypatch) -> None:
    monkeypatch.setenv("EDGE_RING__SLOTS", "-5")
    with pytest.raises(ConfigError, match=r"ring\.slots = '-5'.*greater than or equal to 2"):
        load_settings()


def test_each_bad_value_says_where_it_came_from(tmp_path, monkeypatch) -> None:
    """An outside probe: a bad value from the environment was named as if typed on the command line."""
    config = tmp_path / "edge.toml"
    config.write_text("[ring]\nslots = 1\n")
    monkeypatch.setenv("EDGE_API__PORT", "70000")
    with pytest.raises(ConfigError) as error:
        load_settings(config, ["reduction.serial.min_snr=-1"])
    lines = str(error.value).splitlines()
    assert any(line.startswith("  ring.slots = 1:") and line.endswith(f"(from {config})") for line in lines)
    assert any(line.endswith("(from the environment's EDGE_API__PORT)") for line in lines), lines
    assert any(line.endswith("(from --set reduction.serial.min_snr)") for line in lines), lines


def test_bad_toml_file_is_a_config_error(tmp_path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[ring\nslots = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_daemon_refuses_to_start_on_bad_value(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--set", "ring.slots=0", "--set", f'store.path="{tmp_path}"'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ring.slots = 0" in result.stderr
    assert "greater than or equal to 2" in result.stderr


def test_required_consumers_are_named_by_the_rules_and_each_once() -> None:
    assert load_settings(
        overrides=["upstream.required_consumers=['hpc', 'tape']"]
    ).upstream.required_consumers == [
        "hpc",
        "tape",
    ]
    for bad in ("['hpc', 'hpc']", "['a/b']", "['']"):
        with pytest.raises(ConfigError):
            load_settings(overrides=[f"upstream.required_consumers={bad}"])


@pytest.mark.parametrize("stream_format", ["json", "stream2"])
def test_the_reorder_window_reaches_the_stream_reader(tmp_path: Path, stream_format: str) -> None:
    from edge.appliance import Appliance

    settings = load_settings(
        overrides=[
            f'store.path="{tmp_path / "store"}"',
            "ring.slots=2",
            'reduction.backend="numpy"',
            'upstream.endpoint="tcp://127.0.0.1:0"',
            f'stream.format="{stream_format}"',
            "stream.reorder_frames=4096",
            "stream.reorder_seconds=3.5",
        ]
    )
    appliance = Appliance(settings)
    try:
        source = appliance.source
        assert (source.reorder_frames, source.reorder_seconds) == (4096, 3.5)  # type: ignore[attr-defined]
    finally:
        appliance.stop()


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("stream.endpoint", "garbage", "not a ZeroMQ endpoint"),
        ("stream.endpoint", "tcp://127.0.0.1", "PORT 0..65535"),
        ("stream.endpoint", "tcp://*:5560", "connects"),  # the reader connects: it needs a host
        ("pull.endpoint", "tcp://127.0.0.1:*", "connects"),
        ("upstream.endpoint", "tcp://999.1.1.1:5570", "not an IPv4 address"),
        ("sim.endpoint", "tcp://127.0.0.1:65536", "PORT 0..65535"),
        ("sim.endpoint", "udp://127.0.0.1:5560", "not a ZeroMQ endpoint"),
    ],
)
def test_a_zmq_endpoint_is_checked_when_the_settings_are_read(key: str, value: str, why: str) -> None:
    """Not by the first socket that uses it: a stream reader given ``garbage`` failed on every restart
    until the daemon gave up (exit 3), an upstream address of 999.1.1.1 was a traceback at start."""
    with pytest.raises(ConfigError, match=rf"{key} = .*{why}"):
        load_settings(overrides=[f'{key}="{value}"'])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("upstream.endpoint", "tcp://*:5570"),  # binds: any address
        ("upstream.endpoint", "tcp://127.0.0.1:0"),  # binds: any free port
        ("sim.endpoint", "ipc:///tmp/edge-sim"),
        ("stream.endpoint", "tcp://detector.example:31001"),
        ("stream.endpoint", "inproc://frames"),
    ],
)
def test_zmq_endpoints_the_sockets_take_are_accepted(key: str, value: str) -> None:
    section, name = key.split(".")
    assert getattr(getattr(load_settings(overrides=[f'{key}="{value}"']), section), name) == value


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["udp.payload_bytes=65"], "udp.payload_bytes = 65: 65 is not a multiple of 2"),
        (["detector.height=16384", "detector.width=16384"], "268,435,456 pixels, more than 67,108,864"),
        (
            ["udp.module_rows=4096", "udp.module_cols=4096", "udp.grid_rows=8", "udp.grid_cols=4"],
            "536,870,912 pixels, more than 67,108,864",
        ),
    ],
)
def test_a_frame_the_appliance_cannot_take_is_a_config_error_not_a_traceback_or_an_oom(
    overrides: list[str], says: str
) -> None:
    """A technician's probe: an odd payload size raised a traceback in the simulator and the daemon; a
    half-gigapixel UDP frame, inside every per-key range, ran the simulator out of memory (killed, no
    message)."""
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        load_settings(overrides=overrides)


def test_the_largest_detectors_still_fit() -> None:
    assert load_settings(overrides=["detector.height=4362", "detector.width=4148"]).detector.shape == (
        4362,
        4148,
    )


@pytest.mark.parametrize(
    ("override", "named"), [("nosuch.key=1", "nosuch.key"), ("store.nosuch=1", "store.nosuch")]
)
def test_an_unknown_setting_is_named_as_it_was_typed(override: str, named: str) -> None:
    """A docs-walk probe: ``--set nosuch.key=1`` was refused as "nosuch = {'key': 1}: Extra inputs are not
    permitted"; the refusal names the setting in full."""
    with pytest.raises(ConfigError, match=f"{named} = 1: no such setting"):
        load_settings(None, [override])


def test_an_unknown_setting_spelled_like_one_says_which() -> None:
    """A first-day probe: `--set sim.rate=20` said "no such setting"; the key is sim.rate_hz."""
    with pytest.raises(ConfigError, match=r"sim\.rate = 20: no such setting; did you mean sim\.rate_hz\?"):
        load_settings(None, ["sim.rate=20"])


def test_a_config_file_that_is_no_text_file_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    """An outside admin probe: a directory, a binary file and arrays nested 5000 deep each gave a Python
    traceback (exit 1); each is now one line. A byte order mark (a Windows editor's) is no error."""
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(256)) * 16)
    deep = tmp_path / "deep.toml"
    deep.write_text("roi = " + "[" * 5000 + "]" * 5000 + "\n")
    for path, why in (
        (directory, "is a directory, not a TOML file"),
        (binary, "is not UTF-8 text"),
        (deep, "nests arrays or tables too deep"),
    ):
        with pytest.raises(ConfigError, match=why):
            load_settings(path)
    with pytest.raises(ConfigError, match="nests arrays or tables too deep"):
        load_settings(None, ["reduction.roi=" + "[" * 5000 + "]" * 5000])
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf[ring]\nslots = 16\n")
    assert load_settings(bom).ring.slots == 16


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ('store.path=""', r"store\.path = '': .*empty: name the store's directory"),
        ('api.host=""', r"api\.host = ''"),
        ('udp.host=""', r"udp\.host = ''"),
        ('upstream.endpoint="tcp://127.0.0.1:8080"', r"api\.port and upstream\.endpoint both use port 8080"),
    ],
)
def test_settings_that_meant_something_else_are_refused(override: str, why: str) -> None:
    """An outside admin probe: an empty store path wrote the ledger into the working directory, an empty
    host listened on every interface, and the API and upstream on one port crashed after "ready"."""
    with pytest.raises(ConfigError, match=why):
        load_settings(None, [override])


def test_a_ledger_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    """sqlite's "unable to open database file" came as a traceback, with a lock file and an 8 MiB reserve
    left beside it."""
    with pytest.raises(ConfigError, match=r"ledger\.path: .* is a directory; the ledger is a file"):
        load_settings(None, [f'ledger.path="{tmp_path}"'])
    (tmp_path / "store" / "ledger.sqlite").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"store\.path \(its ledger\.sqlite\): .* is a directory"):
        load_settings(None, [f'store.path="{tmp_path / "store"}"'])


def test_retention_low_water_above_high_water_and_a_token_with_a_newline_are_refused() -> None:
    """An outside admin probe: both were accepted (purging could never stop where it was told to; no
    client's header could carry the token)."""
    with pytest.raises(ConfigError, match=r"low_water = 0\.95 is above retention\.high_water = 0\.5"):
        load_settings(None, ["retention.low_water=0.95", "retention.high_water=0.5"])
    # high_water alone below the default low_water: the low mark follows it (not an error)
    assert load_settings(None, ["retention.high_water=0.45"]).retention.low_water == 0.375
    with pytest.raises(ConfigError, match=r"api\.token = .*control character"):
        load_settings(None, ['api.token="abc\\ndef"'])


def test_a_short_list_item_and_a_check_across_a_section_name_the_setting_not_the_parts() -> None:
    """An outside docs probe: ``reduction.roi.0.3 = [1, 2, 3]: Field required`` for a box of three
    numbers, and ``retention = {'low_water': 0.95}: ...`` for a low mark above the high one."""
    with pytest.raises(ConfigError) as box:
        load_settings(None, ["reduction.roi=[[1,2,3]]"])
    assert r"reduction.roi[0] = [1, 2, 3]: too few values (nothing at index 3)" in str(box.value)
    with pytest.raises(ConfigError) as water:
        load_settings(None, ["retention.low_water=0.95"])
    # named in full, with where the value came from, as every other setting's line (an outside probe)
    assert (
        "\n  retention.low_water = 0.95 is above retention.high_water = 0.9: purging starts at high_water"
        in str(water.value)
    )
    assert "(from --set retention.low_water)" in str(water.value)
    assert "{" not in str(water.value)
    with pytest.raises(ConfigError, match=r"upstream\.required_consumers\[0\] = 1: "):
        load_settings(None, ["upstream.required_consumers=[1]"])


def test_a_taken_udp_port_names_the_setting(tmp_path: Path) -> None:
    """An outside admin probe: "cannot start: [Errno 98] Address already in use", naming nothing."""
    import socket

    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge",
                "run",
                *("--set", 'stream.transport="udp"', "--set", f"udp.port={port}"),
                *("--set", f'store.path="{tmp_path}"', "--set", "api.port=0"),
                *("--set", 'upstream.endpoint="tcp://127.0.0.1:0"'),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        taken.close()
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"udp.host, udp.port = 127.0.0.1, {port}: cannot receive there" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        # a list or a table in the environment is JSON; plain text was a SettingsError traceback
        ("EDGE_UPSTREAM__REQUIRED_CONSUMERS", "hpc", "EDGE_UPSTREAM__REQUIRED_CONSUMERS cannot be read"),
        ("EDGE_REDUCTION__ROI", "abc", "EDGE_REDUCTION__ROI cannot be read"),
        ("EDGE_REDUCTION", "{", "EDGE_REDUCTION cannot be read"),
        # names that look like settings and name none were passed over without a word
        ("EDGE_FOO__BAR", "1", "EDGE_FOO__BAR: no such setting (no section 'foo'"),
        ("EDGE_RING_SLOTS", "5", "EDGE_RING__SLOTS sets ring.slots (two underscores"),
        # a level below a value, or a key its table lacks (an outside probe: ring.slots = {'x': '1'},
        # "Input should be a valid integer (from the settings file)")
        ("EDGE_RING__SLOTS__X", "1", "EDGE_RING__SLOTS__X: no such setting (ring.slots is a value, not"),
        ("EDGE_RING__SLOTZ", "1", "EDGE_RING__SLOTZ: no such setting ([ring] has no 'slotz'"),
        ("EDGE_REDUCTION__TOMO__SLICEZ", "[1]", "no such setting ([reduction.tomo] has no 'slicez'"),
    ],
)
def test_environment_values_that_cannot_be_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings()


def test_a_list_in_the_environment_as_json_and_other_edge_names_are_fine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGE_UPSTREAM__REQUIRED_CONSUMERS", '["hpc", "mirror"]')
    monkeypatch.setenv("EDGE_TEST_GPU", "1")  # not a setting's name: a test's switch, left alone
    assert load_settings().upstream.required_consumers == ["hpc", "mirror"]


def test_a_bad_value_from_an_environment_name_in_any_case_names_that_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pydantic-settings reads ``EDGE_ring__slots`` as ring.slots; a bad value there was blamed on the
    settings file, which had no such key (an outside probe)."""
    config = tmp_path / "min.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "store"}"\n')
    monkeypatch.setenv("EDGE_ring__slots", "1")
    with pytest.raises(ConfigError, match=re.escape("(from the environment's EDGE_ring__slots)")):
        load_settings(config)
    monkeypatch.setenv("EDGE_ring__slots", "5")
    assert load_settings(config).ring.slots == 5


def test_an_optional_file_given_empty_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--set pull.curve_secret_file=` was Path("") = "." ("Is a directory"), so a file set in the
    settings file could not be cleared from the command line (an outside probe). Empty unsets it; a
    setting that needs a path still refuses empty."""
    settings = load_settings(overrides=["pull.curve_secret_file=", 'reduction.mask_file=""'])
    assert settings.pull.curve_secret_file is None and settings.reduction.mask_file is None
    monkeypatch.setenv("EDGE_REDUCTION__DARK_FILE", "")
    assert load_settings().reduction.dark_file is None
    # a directory too (an outside probe: an empty curve_clients_dir was ".", the working directory's keys
    # admitted; unset, the daemon says CurveZMQ needs both settings)
    assert load_settings(overrides=["upstream.curve_clients_dir="]).upstream.curve_clients_dir is None
    with pytest.raises(ConfigError, match=r"store\.path = '': empty"):
        load_settings(overrides=['store.path=""'])


def test_lists_nested_hundreds_deep_are_a_refusal_not_a_recursion_error() -> None:
    """An outside API probe: ``PUT /api/reduction`` with ``roi`` nested 400 deep (a few hundred bytes)
    answered 500 (RecursionError in the settings' bool check) instead of a refusal."""
    import json

    from pydantic import ValidationError

    from edge.config import ReductionSettings

    for depth in (300, 400, 900):
        nested = json.loads("[" * depth + "]" * depth)
        with pytest.raises(ValidationError):
            ReductionSettings.model_validate({"roi": [nested]})
        with pytest.raises(ValidationError):
            ReductionSettings.model_validate({"tomo": {"slices": [nested]}})


def test_an_unknown_key_in_a_section_is_never_said_to_be_its_section() -> None:
    """An outside API probe: ``{"serial": {"foo": 1}}`` answered "did you mean reduction.serial?"."""
    from edge.config import _did_you_mean

    assert _did_you_mean("reduction.serial.foo") == ""
    assert _did_you_mean("reduction.serial.min_sn") == "; did you mean reduction.serial.min_snr?"
