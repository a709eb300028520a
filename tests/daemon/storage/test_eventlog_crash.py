"""SIGKILL a writer at random points: on reopen, every reported batch is there, whole, and nothing else."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

from daemon.storage.eventlog import EventLog
from tests.daemon.storage import crash_writer as writer

ROUNDS = 6


def test_sigkill_mid_batch_leaves_whole_batches_only(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    log_dir = tmp_path / "log"
    reported = -1
    for round_no in range(ROUNDS):
        stderr_path = tmp_path / f"writer-{round_no}.err"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.daemon.storage.crash_writer", str(log_dir)],
            stdout=subprocess.PIPE,
            stderr=stderr_path.open("w"),
            text=True,
            cwd=Path(__file__).parents[3],
        )
        assert proc.stdout is not None
        # Kill after a seeded number of further reports: the child is then inside its next append.
        for _ in range(rng.randint(1, 8)):
            line = proc.stdout.readline()
            if not line.startswith("committed "):
                proc.kill()
                raise AssertionError(f"writer said {line!r}; stderr: {stderr_path.read_text()[-2000:]}")
            reported = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

        with EventLog(log_dir) as log:
            last = log.last_seq()
            assert last % writer.BATCH_EVENTS == 0, f"partial batch: last_seq={last}"
            on_disk = last // writer.BATCH_EVENTS - 1  # index of the last whole batch
            # Reported batches are all there; at most the one in flight committed unreported.
            assert reported <= on_disk <= reported + 1
            for series in writer.SERIES:
                head = log.head(series)
                assert head is not None
                assert head.candle_count == (on_disk + 1) * writer.PER_SERIES
                stored = log.range(series)
                expected = [c for i in range(on_disk + 1) for c in writer.batch(i)[series]]
                assert stored == expected
        reported = on_disk  # the next child resumes after what is on disk
