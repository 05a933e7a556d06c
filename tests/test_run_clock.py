"""When a training run validates and stops (train/clock.py) and how it shows progress off a terminal
(train/progress.py): short CPU runs where one validation takes minutes (issue 24)."""

import io
import json

from linearsr.train.clock import RunClock
from linearsr.train.config import TrainConfig
from linearsr.train.progress import PlainProgress, train_progress


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def config(**values) -> TrainConfig:
    return TrainConfig.from_dict(values)


def test_the_budget_keeps_room_for_the_closing_validation():
    now = FakeTime()
    clock = RunClock(config(max_minutes=3), now=now)
    now.t += 150
    assert not clock.out_of_time()  # nothing measured yet: 150 s of 180
    clock.validated(100, seconds=40.0)  # one validation took 40 s: the closing one will too
    assert clock.out_of_time()  # 150 + 40 > 180: stop now, the run then ends near 3 min, not 3:40
    assert not RunClock(config(), now=now).out_of_time()  # no budget


def test_validation_by_minutes_as_well_as_steps_and_never_back_to_back():
    now = FakeTime()
    clock = RunClock(config(validation={"every": 500, "every_minutes": 2}), now=now)
    assert clock.validation_due(500, final=False) and not clock.validation_due(37, final=False)
    now.t += 121
    assert clock.minutes_due() and clock.validation_due(37, final=False)
    assert not clock.validation_due(37, final=False, all_true=lambda flag: True)  # another rank: not yet
    clock.validated(37, seconds=5.0)
    assert not clock.minutes_due()
    # the closing validation right after one is skipped (fewer than every // 10 steps since)
    assert not clock.validation_due(40, final=True)
    assert clock.validation_due(87, final=True)


def test_a_resumed_run_remembers_its_last_validation(tmp_path):
    rows = [{"kind": "val", "step": 200, "psnr": 20.0, "seconds": 73.0}, {"kind": "train", "step": 201}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clock = RunClock.for_run(config(max_minutes=3, validation={"every": 500}), tmp_path)
    assert (clock.last_step, clock.last_seconds) == (200, 73.0)
    assert not clock.validation_due(201, final=True)  # was: validations at 200 and 201
    assert RunClock.for_run(config(), tmp_path / "new").last_step is None


def test_plain_progress_off_a_terminal_writes_whole_lines():
    out = io.StringIO()
    bar = PlainProgress(total=100, initial=10, file=out)
    for _ in range(5):
        bar.update(1)
    bar.set_postfix(loss="0.1234", lr="3.00e-04")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and text.startswith("train: step 15/100  loss 0.1234  lr 3.00e-04, ")
    assert text.endswith(" s/step\n")
    assert isinstance(train_progress(100, 0, enabled=True), PlainProgress)  # pytest's stderr is no terminal
    assert not isinstance(train_progress(100, 0, enabled=False), PlainProgress)
