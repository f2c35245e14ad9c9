"""The one progress style: bars on a terminal, plain timed lines in a log, nothing for a no-op or --quiet."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios

from curate.progress import Progress, plural


class Clock:
    """A clock the test moves by hand: progress lines depend on elapsed time, tests must not."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_log_lines_every_interval_with_total_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    with Progress("embed", 100, "image", stream=out, every=10, clock=clock, enabled=True) as p:
        p.update(10)                 # t = 0 s: too soon for a line
        clock.t += 10
        p.update(10)                 # t = 10 s: 20 of 100 at 2/s -> 40 s left
        clock.t += 5
        p.update(30)                 # too soon again
        clock.t += 15
        p.update(50)                 # t = 30 s
    lines = out.getvalue().splitlines()
    assert lines == ["embed: 20/100 images (20%), 2.0 images/s, 40s left",
                     "embed: 100/100 images (100%), 3.3 images/s, 0s left",
                     "embed: 100 images in 30s (3.3 images/s)"]
    assert "\r" not in out.getvalue()


def test_short_steps_and_noops_print_nothing_in_a_log():
    out, clock = io.StringIO(), Clock()
    with Progress("scan", None, "item", stream=out, clock=clock, enabled=True) as p:
        p.update(5)
        clock.t += 1
        p.update(5)
    with Progress("index images", 0, "vector", stream=out, clock=clock, enabled=True):
        pass
    assert out.getvalue() == ""


def test_unknown_total_counts_with_spaced_units():
    out, clock = io.StringIO(), Clock()
    with Progress("scan", None, "item", stream=out, every=1, clock=clock, enabled=True) as p:
        clock.t += 2
        p.update(1)
    assert out.getvalue().splitlines()[0] == "scan: 1 item, 0.5 items/s"


def test_terminal_bar_has_total_and_no_bar_for_a_noop():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a 100-column terminal
    with os.fdopen(slave, "w") as tty:
        with Progress("embed", 40, "image", stream=tty, enabled=True) as p:
            p.update(40)
        with Progress("index images", 0, "vector", stream=tty, enabled=True):
            pass
        tty.flush()
        drawn = b""
        while select.select([master], [], [], 0.2)[0]:   # drain what the pty holds
            drawn += os.read(master, 65536)
    os.close(master)
    drawn = drawn.decode()
    assert "embed: 100%" in drawn and "40/40" in drawn and " images/s" in drawn
    assert "index images" not in drawn


def test_disabled_prints_nothing():
    out, clock = io.StringIO(), Clock()
    with Progress("embed", 10, "image", stream=out, every=0, clock=clock, enabled=False) as p:
        clock.t += 100
        p.update(10)
    assert out.getvalue() == ""


def test_plural():
    assert [plural(1, "image"), plural(2, "image"), plural(1024, "caption"), plural(0, "class", "classes")] == \
        ["1 image", "2 images", "1,024 captions", "0 classes"]
