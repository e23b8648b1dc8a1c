"""Progress as lines: a long step says it is still going, a loop writes counted lines, no redraws."""

from __future__ import annotations


def test_a_long_step_says_it_is_still_going_and_a_bar_writes_lines(capsys):
    import time

    from musicrec.progress import bar, step

    with step("slow", heartbeat=0.2):
        time.sleep(0.9)
    for _ in bar(range(3), desc="batches", every=0.0):
        time.sleep(0.05)
    lines = capsys.readouterr().out.splitlines()
    beats = [line for line in lines if "slow: still going" in line]
    assert (
        2 <= len(beats) <= 5
        and lines[len(beats)].endswith(("s", "min"))
        and "slow: done in" in lines[len(beats)]
    )
    counted = [line for line in lines if "batches: " in line]
    assert counted[-1].split("] ", 1)[1].startswith("batches: 3/3 batches (100%)")
    assert all("\r" not in line for line in lines) and len(counted) == len(set(counted)), "no redraws"
