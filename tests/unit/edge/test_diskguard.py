"""How the disk guard words an error for people: one line, bounded, its errno's meaning first."""

from __future__ import annotations

from edge.diskguard import brief


def test_an_error_in_an_alarm_or_loss_record_is_one_readable_line() -> None:
    """A chaos probe: the disk-full alarm and loss details carried HDF5's message cut mid-line at 120
    characters, a newline inside ("filename = '/tmp/cha)")."""
    hdf5 = OSError(
        28,
        "Unable to synchronously write file (file write failed: time = Fri Dec  4 11:33:21 2026\n,"
        " filename = '/tmp/chaos_probe/small/store/chaos5/chaos5_00012.h5.part', file descriptor = 31,"
        " errno = 28, error message = 'No space left on device', buf = 0x7f, total write size = 524288)",
    )
    text = brief(hdf5)
    assert "\n" not in text and len(text) <= 160 and text.endswith("...")
    assert text.startswith("No space left on device: [Errno 28] Unable to synchronously write file"), text
    assert brief(RuntimeError("short\n  message")) == "short message"
    assert brief(RuntimeError()) == "RuntimeError"
