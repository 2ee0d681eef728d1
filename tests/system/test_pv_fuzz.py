"""A Channel Access fuzzer over the appliance's PVs (issue 12): random types, lengths and values.

Real processes (``edge sim --ioc`` and ``edge run`` with its IOC, as in ``test_epics_control.py``); this
process writes through caproto's client, which lets a put carry any CA type and element count (pyepics
converts to the PV's type first). Every writable PV of the table gets puts of DOUBLE, LONG, SHORT,
FLOAT, ENUM, CHAR (long strings) and STRING data of random lengths (0 .. twice the record and beyond)
and values (extremes, NaN, inf, huge numbers, random bytes and unicode); read-only PVs get some too.
After every batch the daemon must still run and answer ``/api/status``; at the end every PV answers a
read, nothing put an exception into the daemon's log, and a good put still works.

``make test`` runs it briefly (``EDGE_PV_FUZZ_PUTS``, default 1000); ``make fuzz`` at length. A failure
prints the seed: ``EDGE_PV_FUZZ_SEED=<seed>`` replays it. ``Acquire`` is left out (a put of 1 starts the
detector for up to 10^7 frames); its bad puts are in ``test_epics_puts.py``.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from typing import Any

import pytest
from edgeprocs import wait_for
from test_epics_control import Stack

from edge.ioc import PVS

PUTS = int(os.environ.get("EDGE_PV_FUZZ_PUTS", "1000"))
SEED = int(os.environ.get("EDGE_PV_FUZZ_SEED", str(random.SystemRandom().randrange(2**32))))
BATCH = 50

pytestmark = pytest.mark.timeout(120 + PUTS // 10)

_INTS = [
    0,
    1,
    -1,
    2,
    3,
    4,
    5,
    7,
    15,
    16,
    99,
    255,
    256,
    32767,
    -32768,
    65535,
    2**31 - 1,
    -(2**31),
    10**7,
    10**7 + 1,
]
_FLOATS = [0.0, -0.0, 1e-300, -1.0, 0.5, 3600.0, 3600.0001, 1e308, -1e308, math.inf, -math.inf, math.nan]


def _values(rng: random.Random) -> tuple[Any, Any, int]:
    """(caproto ChannelType, data, element count) of one random put."""
    from caproto import ChannelType

    kind = rng.choice(["double", "long", "short", "float", "enum", "char", "string"])
    count = rng.choice([0, 1, 1, 1, 1, 2, 3, 39, 40, 41, 255, 256, 257, 300, 1000, 5000])
    if kind in ("double", "float"):
        data: Any = [
            rng.choice(_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6) for _ in range(count)
        ]
        ctype = ChannelType.DOUBLE if kind == "double" else ChannelType.FLOAT
        if kind == "float":
            data = [v if not math.isfinite(v) or abs(v) < 3e38 else math.copysign(3e38, v) for v in data]
    elif kind in ("long", "short", "enum"):
        bounds = {"long": (-(2**31), 2**31 - 1), "short": (-(2**15), 2**15 - 1), "enum": (0, 2**16 - 1)}[kind]
        low, high = bounds
        data = [
            min(max(rng.choice(_INTS), low), high) if rng.random() < 0.6 else rng.randint(low, high)
            for _ in range(count)
        ]
        ctype = {"long": ChannelType.LONG, "short": ChannelType.INT, "enum": ChannelType.ENUM}[kind]
    elif kind == "char":
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(count))
        else:  # text, sometimes unicode, sometimes a ROI or row list the parsers must refuse or take
            pieces = [
                "0:16:0:16",
                ";",
                ",",
                "12",
                "-3",
                "é",
                "🙂",
                "\x00",
                "x" * 40,
                "99999999999999999999",
                " ",
            ]
            text = "".join(rng.choice(pieces) for _ in range(max(1, count // 8)))
            data = text.encode("utf-8")[: max(count, 1)]
        ctype = ChannelType.CHAR
    else:
        words = ["", "raw", "powder", "tomo", "1", "-1", "nan", "inf", "1e999", "Done", "x" * 39, "é" * 19]
        data = [rng.choice(words) for _ in range(max(1, min(count, 4)))]
        ctype = ChannelType.STRING
    return ctype, data, count


def test_random_puts_to_every_pv_leave_the_daemon_up_and_every_pv_answering(idle_stack: Stack) -> None:
    from caproto.threading.client import Context

    stack = idle_stack
    rng = random.Random(SEED)
    note = f"(replay: EDGE_PV_FUZZ_SEED={SEED} EDGE_PV_FUZZ_PUTS={PUTS})"
    targets = [spec.name for spec in PVS if spec.writable and spec.name != "Acquire"]
    readonly = [spec.name for spec in PVS if not spec.writable]
    ctx = Context()
    outcomes: Counter[str] = Counter()
    try:
        pvs = dict(
            zip(targets + readonly, ctx.get_pvs(*(stack.prefix + n for n in targets + readonly)), strict=True)
        )
        for pv in pvs.values():
            pv.wait_for_connection(timeout=10)
        for number in range(PUTS):
            name = rng.choice(targets) if rng.random() < 0.9 else rng.choice(readonly)
            ctype, data, count = _values(rng)
            try:
                response = pvs[name].write(data, data_type=ctype, wait=True, timeout=5)
                outcomes[response.status.name] += 1
            except TimeoutError:
                pytest.fail(f"put {number} to {name} ({ctype.name}[{count}]) got no answer in 5 s {note}")
            except Exception as error:  # refused by caproto itself (e.g. a string too long for DBR_STRING)
                outcomes[f"client:{type(error).__name__}"] += 1
            if number % BATCH == BATCH - 1:
                assert stack.procs["daemon"].poll() is None, f"the daemon died {note}\n{stack.log('daemon')}"
                assert stack.status()["appliance"] is not None
        # every PV still answers
        unanswered = []
        for name, pv in pvs.items():
            try:
                pv.read(timeout=5)
            except Exception as error:
                unanswered.append(f"{name}: {error}")
        assert not unanswered, f"PVs without an answer: {unanswered} {note}"
    finally:
        ctx.disconnect()
    daemon = stack.procs["daemon"]
    assert daemon.poll() is None, f"the daemon died {note}\n{stack.log('daemon')}"
    log = (stack.tmp_path / "daemon.log").read_text(errors="replace")
    assert "Traceback" not in log, f"{note}\n{log[-4000:]}"
    assert outcomes["ECA_NORMAL"] > 0 and outcomes["ECA_NOWTACCESS"] + outcomes["ECA_PUTFAIL"] >= 0, outcomes
    # the IOC still takes a good put and shows it
    import epics

    assert epics.caput(stack.prefix + "NumImages", 12, wait=True, timeout=10) == 1
    wait_for(
        lambda: epics.caget(stack.prefix + "NumImages_RBV", use_monitor=False) == 12, 5, "NumImages_RBV 12"
    )
    print(f"PV fuzz: {PUTS} puts, seed {SEED}: {dict(outcomes)}")
