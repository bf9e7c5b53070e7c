"""Progress that tells the truth: lines at least every 30 s off a terminal, an ETA without the
one-off cache build."""

from __future__ import annotations

import logging
import re
import sys
import time
import types

import pytest
import tqdm
import yaml

from mamf.runs import experiment
from mamf.system import progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LogFile:
    """stderr redirected to a file: not a terminal; remembers when each line was written."""

    def __init__(self, clock: FakeClock):
        self.clock, self.lines = clock, []

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> None:
        self.lines.extend((self.clock(), line) for line in text.splitlines())

    def flush(self) -> None:
        pass


@pytest.fixture
def log_file(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    monkeypatch.setattr(progress, "_clock", clock)
    return LogFile(clock)


def test_a_line_at_least_every_30_s_when_stderr_is_not_a_terminal(log_file, monkeypatch):
    monkeypatch.setattr(sys, "stderr", log_file)  # here: pytest swaps stderr between phases
    for _ in progress.bar(range(40), desc="caching frozen image features", leave=False):
        log_file.clock.now += 7.0  # 280 s in all
    times = [t for t, _ in log_file.lines]
    assert len(times) >= 280 // 30
    assert max(b - a for a, b in zip(times, times[1:])) <= 30 + 7.0  # one iteration late at most
    stamp = r"mamf: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d caching frozen image features: "
    assert all(re.match(stamp, line) and "\r" not in line for _, line in log_file.lines)


def test_a_stage_in_a_log_file_has_start_and_end_lines_and_no_empty_0_percent(log_file,
                                                                               monkeypatch):
    monkeypatch.setattr(sys, "stderr", log_file)
    bar = progress.bar(total=4, desc="training mamf", unit="step", leave=False)
    for _ in range(4):
        log_file.clock.now += 2.0
        bar.update(1)
        bar.set_postfix(loss="1.234")
    bar.close()
    never = progress.bar(range(0), desc="an empty stage", leave=False)
    list(never)
    lines = [line for _, line in log_file.lines]
    assert len(lines) == 2
    assert lines[0].endswith("training mamf: started (4 step)")
    assert lines[1].endswith("training mamf: done, 4 step in 8.0 s, loss 1.234")
    assert not any("0%" in line or "an empty stage: done" in line for line in lines)


def test_a_line_between_says_count_and_eta(log_file, monkeypatch):
    monkeypatch.setattr(sys, "stderr", log_file)
    for _ in progress.bar(range(4), desc="meta-test", unit="task"):
        log_file.clock.now += 20.0
    between = [line for _, line in log_file.lines if "/4 task" in line]
    assert between and "about" in between[0] and "left" in between[0]


def test_quiet_bars_print_nothing(log_file, monkeypatch):
    monkeypatch.setattr(sys, "stderr", log_file)
    for _ in progress.bar(range(10), enabled=False, desc="x"):
        log_file.clock.now += 40.0
    assert log_file.lines == []


def test_the_eta_leaves_one_off_costs_out(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress, "_clock", clock)
    eta = progress.Eta()
    eta.add_todo("row", 5)
    with eta.apart():
        clock.now += 600.0  # the cache build, in the first row
    clock.now += 60.0  # the first row itself
    eta.done("row", 60.0)
    assert eta.line(1, 5) == "1/5, about 4.0 min left"  # not (660 s x 4)


def test_the_eta_on_rows_of_two_very_different_costs(monkeypatch):
    """Zero-shot rows of 1 s a task and trained rows of 200 s of training each, interleaved as a
    grid runs them: the time left is each kind's rate times its own work left, not the mean row
    (which made the demo's ETA 4x off), and it is not shown before every kind left has run."""
    clock = FakeClock()
    monkeypatch.setattr(progress, "_clock", clock)
    eta = progress.Eta()
    for _ in range(3):  # three datasets' worth: a zero-shot row of 10 tasks, a trained one
        eta.add_todo(("test", "zeroshot"), 10)
        eta.add_todo(("train", "mamf"), 1)
        eta.add_todo(("test", "mamf"), 10)
    clock.now += 10.0
    eta.done(("test", "zeroshot"), 10.0, 10)
    assert eta.seconds_left() is None  # mamf has not run yet: no whole ETA, not a wrong one
    # but the part that is known, labelled as such: 2 zero-shot rows of 10 s
    assert eta.line(1, 6) == "1/6, at least 20.0 s left (partial: 2 kinds of work not timed yet)"
    clock.now += 210.0
    eta.done(("train", "mamf"), 200.0)
    eta.done(("test", "mamf"), 10.0, 10)
    # left: 2 zero-shot rows (2 x 10 s) and 2 trained ones (2 x 210 s)
    assert eta.seconds_left() == pytest.approx(440.0)
    assert eta.line(2, 6) == "2/6, about 7.3 min left"
    # the mean row (110 s) would have said 4 x 110 = 440 s here too, but not after a cheap
    # row: after the next zero-shot row the mean row says 3 x 76.7 = 230 s, the truth 430 s
    clock.now += 10.0
    eta.done(("test", "zeroshot"), 10.0, 10)
    assert eta.seconds_left() == pytest.approx(430.0)
    eta.forget(("train", "mamf"))  # a training that failed is not waited for
    eta.forget(("test", "mamf"), 10)
    assert eta.seconds_left() == pytest.approx(220.0)


def test_nothing_timed_yet_gives_the_count_alone(monkeypatch):
    monkeypatch.setattr(progress, "_clock", FakeClock())
    eta = progress.Eta()
    eta.add_todo("row", 3)
    assert eta.line(0, 3) == "0/3" and eta.seconds_left() is None


def test_the_eta_scales_for_time_between_the_measured_parts(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress, "_clock", clock)
    eta = progress.Eta()
    eta.add_todo("row", 3)
    clock.now += 20.0  # 10 s of the row measured, 10 s setting it up
    eta.done("row", 10.0)
    assert eta.seconds_left() == pytest.approx(40.0)


def test_the_experiment_times_the_cache_build_apart(tmp_path, colour_folder, monkeypatch, caplog):
    clock = types.SimpleNamespace(offset=0.0)
    monkeypatch.setattr(progress, "_clock", lambda: time.monotonic() + clock.offset)
    real_prepare = experiment.prepare

    def slow_prepare(*args, **kwargs):  # as if building the caches took 10 minutes
        clock.offset += 600.0
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(experiment, "prepare", slow_prepare)
    raw = {"name": "eta", "model": "tiny-random-clip", "methods": ["zeroshot", "classical"],
           "seeds": [1], "settings": {"metatest": {"epochs": 1}, "train": {"steps": 2}},
           "datasets": {"colours": {"root": str(colour_folder), "ways": [2, 3, 4]}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.INFO):
        experiment.run_experiment(experiment.load_experiment(tmp_path / "exp.yaml"),
                                  tmp_path / "out", progress=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.match(r"colours: model and caches ready in 6\d\d\.\d s", m) for m in messages)
    lines = [re.search(r"\[(\d+)/6(.*)\]", m) for m in messages if "/6" in m]
    assert [int(m.group(1)) for m in lines] == [1, 2, 3, 4, 5, 6]
    # classical not yet run: no whole time left, the known part labelled partial
    assert all("not timed yet" in m.group(2) and "about" not in m.group(2) for m in lines[:3])
    left = re.search(r"about ([\d.]+) (s|min) left", lines[3].group(2))
    assert left and (left.group(2) == "s" or float(left.group(1)) < 5)  # not 2 x 10 min


def test_quiet_silences_the_cache_builds_too(colour_folder, tmp_path, capsys, monkeypatch):
    """--quiet reaches the image cache and frozen-feature bars, which no caller passes a flag to
    (they printed off a terminal before)."""
    from mamf.cli import main

    args = ["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder), "--ways", "2",
            "--set", "train.freeze_image_backbone=true"]
    try:
        monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache-quiet"))
        assert main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
        assert "caching" not in capsys.readouterr().err
        monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache-loud"))  # built again, loudly
        assert main([*args, "--out", str(tmp_path / "loud")]) == 0
        assert "caching" in capsys.readouterr().err
    finally:
        progress.set_quiet(False)
