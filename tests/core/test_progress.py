"""The one progress style: bars on a terminal, plain timed lines in a log, nothing for a no-op or --quiet."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios

import pytest

from curate.core.progress import Progress, plural


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


def _curate_on_a_terminal(*args: str) -> str:
    """Run `curate ...` in a real process whose stdout and stderr are a 100x24 terminal; what it drew."""
    import subprocess
    import sys

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:          # EIO: the process closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    return drawn.decode(errors="replace")


@pytest.mark.slow
def test_build_index_progress_on_a_terminal_and_in_a_log(tmp_path):
    import subprocess
    import sys

    from conftest import make_folder

    src = make_folder(tmp_path / "photos", n=3)
    first = _curate_on_a_terminal("build-index", str(src), "-w", str(tmp_path / "ws"), "--model", "curate-tiny",
                                  "--pretrained", "none", "--workers", "0")
    assert "embed: 100%" in first and "3/3" in first and " images/s" in first     # total, rate
    # run again: nothing to embed or index, so no bar for those steps
    again = _curate_on_a_terminal("build-index", str(src), "-w", str(tmp_path / "ws"), "--workers", "0")
    assert "embed:" not in again and "index images:" not in again and "up to date" in again
    # in a log (stderr is a file): no carriage-return frames; --quiet: no progress at all
    log = subprocess.run([sys.executable, "-m", "curate.cli", "build-index", str(src), "-w", str(tmp_path / "ws2"),
                          "--model", "curate-tiny", "--pretrained", "none", "--workers", "0"],
                         capture_output=True, text=True, check=True)
    assert "\r" not in log.stderr and "\r" not in log.stdout
    quiet = subprocess.run([sys.executable, "-m", "curate.cli", "--quiet", "classify", "-w", str(tmp_path / "ws2")],
                           capture_output=True, text=True, check=True)
    assert "scoring" not in quiet.stderr and "classified 3 images and 3 captions" in quiet.stdout


def test_a_step_that_learns_its_size_late_rates_its_own_work_only():
    """classify's "scoring" bar is made before the model loads and learns its total after
    (reset): in a log, the rate and the time are the scoring's, as on a terminal."""
    out, clock = io.StringIO(), Clock()
    with Progress("scoring", 0, "vector", stream=out, every=10, clock=clock, enabled=True) as p:
        clock.t += 20                # the model loads, the label prompts are encoded
        p.reset(300)
        clock.t += 1
        p.update(100)
        clock.t += 9
        p.update(100)                # 10 s of scoring: a line
        clock.t += 5
        p.update(100)
    assert out.getvalue().splitlines() == ["scoring: 200/300 vectors (67%), 20.0 vectors/s, 5s left",
                                           "scoring: 300 vectors in 15s (20.0 vectors/s)"]
