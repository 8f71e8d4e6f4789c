"""The benchmark harness (benchmarks/harness.py): order, statistics, image counts; nothing real
is timed (a fake clock advances by what each block says it took)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import harness  # noqa: E402


class FakeClock(harness.Clock):
    """Wall time advances only when a block says so; CPU time at half that pace."""

    def __init__(self):
        self.now = 0.0

    def wall(self):
        return self.now

    def cpu(self):
        return self.now / 2

    def spend(self, seconds):
        self.now += seconds


def contender(name, clock, seconds, images, calls):
    def block():
        calls.append(name)
        clock.spend(seconds)
        return images

    return harness.Contender(name, block)


def test_rounds_rotate_the_order_and_warmup_is_not_timed():
    clock, calls = FakeClock(), []
    contenders = [contender(n, clock, 1.0, 8, calls) for n in "ABC"]
    result = harness.measure(contenders, rounds=4, warmup=2, clock=clock, log=None)
    assert calls[:6] == list("ABCABC")  # the warm-up, untimed
    assert calls[6:] == list("ABCBCACABABC")
    assert result.order == calls[6:]
    assert all(len(result.timings[n]) == 4 for n in "ABC")


def test_two_contenders_alternate_which_goes_first():
    assert harness.schedule(["torso", "plain"], 4) == [
        ["torso", "plain"],
        ["plain", "torso"],
        ["torso", "plain"],
        ["plain", "torso"],
    ]


def test_ratios_are_per_round_and_summarised_by_median_and_range():
    clock, calls = FakeClock(), []
    durations = iter([1.0, 2.0, 1.0, 4.0, 2.0, 2.0])  # torso, plain; plain, torso; torso, plain

    def timed(name):
        def block():
            clock.spend(next(durations))
            return 10

        return harness.Contender(name, block)

    result = harness.measure([timed("torso"), timed("plain")], 3, warmup=0, clock=clock, log=None)
    # Round 1: torso 1 s, plain 2 s -> 2.0; round 2: plain 1 s, torso 4 s -> 0.25;
    # round 3: 2 s each -> 1.0.
    assert result.ratios("torso", "plain") == pytest.approx([2.0, 0.25, 1.0])
    summary = harness.summarize(result.ratios("torso", "plain"))
    assert (summary.median, summary.low, summary.high) == pytest.approx((1.0, 0.25, 2.0))
    assert result.ratios("torso", "plain", cpu=True) == pytest.approx([2.0, 0.25, 1.0])
    assert result.timings["torso"][0].cpu == pytest.approx(0.5)
    assert calls == []


def test_images_counted_are_those_the_block_reports():
    """A contender whose loader drops a partial batch trains fewer images in the same time,
    so it is slower: the harness credits what the block returns, not a nominal count."""
    clock, calls = FakeClock(), []
    full = contender("all 100 images", clock, 1.0, 100, calls)
    dropping = contender("drops 4 of them", clock, 1.0, 96, calls)
    result = harness.measure([full, dropping], 2, warmup=0, clock=clock, log=None)
    assert result.rates("drops 4 of them") == pytest.approx([96.0, 96.0])
    assert result.ratios("all 100 images", "drops 4 of them") == pytest.approx([100 / 96] * 2)


def test_setup_runs_once_before_the_warmup():
    clock, calls = FakeClock(), []
    plain = contender("A", clock, 1.0, 1, calls)
    plain.setup = lambda: calls.append("setup")
    harness.measure([plain], 2, warmup=1, clock=clock, log=None)
    assert calls == ["setup", "A", "A", "A"]


def test_bad_arguments_are_refused():
    clock, calls = FakeClock(), []
    a = contender("A", clock, 1.0, 1, calls)
    with pytest.raises(ValueError, match="rounds"):
        harness.measure([a], 0, clock=clock, log=None)
    with pytest.raises(ValueError, match="differ"):
        harness.measure([a, a], 1, clock=clock, log=None)
    with pytest.raises(ValueError):
        harness.summarize([])


def test_speed_table_shows_ratios_targets_and_spread():
    clock = FakeClock()
    durations = iter([1.0, 2.0, 4.0, 2.0])  # torso, plain; plain, torso

    def timed(name):
        def block():
            clock.spend(next(durations))
            return 10

        return harness.Contender(name, block)

    result = harness.measure([timed("torso"), timed("plain")], 2, warmup=0, clock=clock, log=None)
    table = harness.speed_table(result, "torso", targets={"plain": 1.5})
    lines = table.splitlines()
    assert lines[0].startswith("| contender |")
    torso_row, plain_row = lines[2], lines[3]
    # torso: 10 img/s, then 5; plain: 5, then 2.5; torso / plain 2.0 in both rounds.
    assert "| torso | 7.5 (5.0-10.0) | 15.0 (10.0-20.0) | - |" in torso_row
    assert "| plain | 3.8 (2.5-5.0) |" in plain_row
    assert "2.00x (2.00-2.00)" in plain_row
    assert ">= 1.50x: met" in plain_row


def test_footer_warns_when_busy(monkeypatch):
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert "WARNING" in harness.footer()
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert "WARNING" not in harness.footer()


def test_markdown_table_aligns_numbers_right():
    table = harness.markdown_table(["name", "value"], [["a", 1.5], ["b", "2.00x"]])
    assert table.splitlines()[1] == "| --- | ---: |"
    assert "| a | 1.50 |" in table


def test_a_missing_optional_peer_is_reported_and_skipped(capsys):
    assert harness.optional("no_such_module_for_torso_benchmarks", "the peer row") is False
    assert "not installed: the peer row skipped" in capsys.readouterr().out
    assert harness.optional("json", "json row") is True


def test_contenders_select_by_prefix():
    import argparse

    parser = argparse.ArgumentParser()
    harness.add_arguments(parser)
    args = parser.parse_args(["--contenders", "torso", "plain"])
    assert harness.wanted(args, "plain loop, channels_last")
    assert not harness.wanted(args, "fastai vision_learner")
    assert harness.wanted(parser.parse_args([]), "fastai vision_learner")
