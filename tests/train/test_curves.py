"""Training curves: the series read from metrics.jsonl (a run still going, a resumed run), the panels drawn,
`yayi plot` over several runs, and the closing summary of a finished run."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tests.helpers import one_error_line, write_jsonl, yayi
from yayi_cli.models.run_files import METRICS_FILE, SUMMARY_FILE
from yayi_cli.runtime.errors import DataError
from yayi_cli.train.curves import draw_curves, read_events, run_series, smoothed
from yayi_cli.train.summary import closing_summary, print_closing_summary


def sft_events(steps: int = 12, *, lr: float = 1e-3, per_epoch: int = 4, resumed_at: int | None = None) -> list[dict]:
    """The events of an SFT run logging every step and evaluating every 4 (as train/progress.py writes them)."""
    events = [{"event": "begin", "step": 0, "max_steps": steps}]
    for step in range(1, steps + 1):
        events.append({"event": "log", "step": step, "max_steps": steps, "epoch": step / per_epoch, "elapsed_s": step * 0.5,
                       "tokens_per_second": 1000.0 + step, "loss": 5.0 / step, "learning_rate": lr * (1 - step / steps),
                       "grad_norm": 1.0 + step / 10})
        if step % 4 == 0:
            events.append({"event": "eval", "step": step, "max_steps": steps, "epoch": step / per_epoch, "eval_loss": 6.0 / step})
            if resumed_at is not None and step == 8:  # a launch that stopped here and resumed from `resumed_at`
                events.append({"event": "begin", "step": resumed_at, "max_steps": steps})
                events += [{"event": "log", "step": s, "epoch": s / per_epoch, "loss": 9.0, "learning_rate": lr,
                            "grad_norm": 1.0, "tokens_per_second": 1.0} for s in range(resumed_at + 1, 9)]
    return events


def write_run(directory: Path, events: list[dict], *, cut_last: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(event) + "\n" for event in events)
    if cut_last:  # a run still going: its last line is being written
        text += json.dumps(events[-1])[:20]
    (directory / METRICS_FILE).write_text(text, encoding="utf-8")
    return directory


def panels(figure) -> dict[str, list[str]]:
    """Each visible panel's title and the labels of its legend."""
    return {axis.get_title(): axis.get_legend_handles_labels()[1] for axis in figure.axes if axis.get_visible()}


def test_a_run_still_going_is_read_up_to_its_last_whole_line(tmp_path):
    run = write_run(tmp_path / "run", sft_events(), cut_last=True)
    assert len(read_events(run)) == len(sft_events())
    assert run_series("run", read_events(run)).points["loss"][-1] == (12, 5.0 / 12)


def test_a_damaged_line_in_the_middle_is_named_with_its_file_and_line(tmp_path):
    run = write_run(tmp_path / "run", sft_events(4))
    lines = (run / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    lines[1] = "{not json"
    (run / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{METRICS_FILE}:2: not a JSON event"):
        read_events(run)


def test_a_resumed_run_keeps_the_steps_it_trained_again_not_the_ones_it_undid():
    series = run_series("run", sft_events(resumed_at=6))
    steps = [step for step, _ in series.points["loss"]]
    assert steps == list(range(1, 13))  # 7 and 8 once each: the resumed launch's
    assert dict(series.points["loss"])[7] == 9.0 and dict(series.points["loss"])[9] == 5.0 / 9
    assert [step for step, _ in series.eval_points["loss"]] == [4, 12]  # the eval at 8 was undone and not redone here
    assert series.epoch_starts == [4, 8, 12]


def test_the_smoothed_loss_starts_at_the_first_value_and_follows_a_constant_exactly():
    assert smoothed([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    assert smoothed([4.0, 0.0])[0] == pytest.approx(4.0) and 0 < smoothed([4.0, 0.0])[1] < 4.0


def test_an_sft_run_has_loss_with_eval_learning_rate_gradient_norm_and_throughput_panels():
    figure = draw_curves([run_series("run", sft_events())])
    assert panels(figure) == {"Loss": ["train (smoothed)", "eval"], "Learning rate": ["train"],
                              "Gradient norm": ["train"], "Throughput": ["train"]}
    loss = next(axis for axis in figure.axes if axis.get_title() == "Loss")
    assert loss.get_xlabel().startswith("step") and loss.get_ylabel() == "loss"
    assert len([line for line in loss.get_lines() if line.get_linestyle() == ":"]) == 3  # the epochs that began


def test_more_than_twenty_epochs_are_not_marked_so_their_lines_do_not_hide_the_curves():
    loss = next(axis for axis in draw_curves([run_series("run", sft_events(30, per_epoch=1))]).axes if axis.get_title() == "Loss")
    assert loss.get_xlabel() == "step" and not [line for line in loss.get_lines() if line.get_linestyle() == ":"]


def test_a_preference_run_adds_reward_accuracy_and_margin_panels():
    events = [{**event, "rewards/accuracies": 0.5, "rewards/margins": 0.1} if event["event"] == "log" else event
              for event in sft_events()]
    assert {"Reward accuracy", "Reward margin"} <= set(panels(draw_curves([run_series("dpo", events)])))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_yayi_plot_overlays_two_runs_labelled_by_folder_and_reads_one_still_going(tmp_path):
    first = write_run(tmp_path / "lr-1e-5", sft_events(lr=1e-5))
    second = write_run(tmp_path / "lr-2e-5", sft_events(8, lr=2e-5), cut_last=True)
    picture = tmp_path / "compare.png"
    result = yayi("plot", str(first), str(second), "-o", str(picture), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [run["run"] for run in document["runs"]] == ["lr-1e-5", "lr-2e-5"]
    assert document["runs"][1]["train"]["loss"][-1] == [8, 5.0 / 8]
    assert png_size(picture) == (1280, 720)  # two columns of 6.4 x 3.6 inches, two rows, at 100 dpi
    found = panels(draw_curves([run_series("lr-1e-5", read_events(first)), run_series("lr-2e-5", read_events(second))]))
    assert found["Loss"] == ["lr-1e-5 (smoothed)", "lr-1e-5 eval", "lr-2e-5 (smoothed)", "lr-2e-5 eval"]
    assert all(found[title] == ["lr-1e-5", "lr-2e-5"] for title in ("Learning rate", "Gradient norm", "Throughput"))


def test_yayi_plot_refuses_an_existing_picture_and_a_folder_without_metrics(tmp_path):
    run = write_run(tmp_path / "run", sft_events(4))
    (tmp_path / "curves.png").write_bytes(b"mine")
    one_error_line(yayi("plot", str(run), "-o", str(tmp_path / "curves.png")), 2, "already exists")
    assert (tmp_path / "curves.png").read_bytes() == b"mine"
    one_error_line(yayi("plot", str(tmp_path), "-o", str(tmp_path / "new.svg")), 2, f"no {METRICS_FILE} here")
    one_error_line(yayi("plot", str(run), "-o", str(tmp_path / "new.jpg")), 2, "name a .png or .svg file")


def finished_run_files(directory: Path) -> Path:
    write_run(directory, sft_events())
    history = [{"loss": 5.0 / step, "step": step, "epoch": step / 4} for step in range(1, 13)]
    summary = {"metrics": {"epoch": 3.0, "train_runtime": 6.5}, "throughput": {"train_tokens_per_second": 1234.5},
               "loss_history": history}
    (directory / SUMMARY_FILE).write_text(json.dumps(summary), encoding="utf-8")
    return directory


def test_the_closing_summary_takes_its_numbers_from_the_runs_files(tmp_path):
    run = finished_run_files(tmp_path / "run")
    closing = closing_summary(run)
    assert (closing["steps"], closing["epochs"], closing["seconds"], closing["tokens_per_second"]) == (12, 3.0, 6.5, 1234.5)
    assert closing["first_train_loss"] == {"step": 1, "loss": 5.0} and closing["last_train_loss"] == {"step": 12, "loss": 5.0 / 12}
    assert closing["best_eval_loss"] == closing["last_eval_loss"] == {"step": 12, "loss": 0.5}
    assert closing["curves"] is None and closing["next"][0] == f"yayi chat --model {run}"
    assert closing_summary(tmp_path / "nothing") is None


def test_the_closing_summary_prints_as_one_small_table(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    print_closing_summary(closing_summary(finished_run_files(tmp_path / "run")), console)
    text = console.export_text()
    for row in (r"train loss +5\.0000 \(step 1\) -> 0\.4167 \(step 12\)", r"eval loss +best 0\.5000 \(step 12\), last 0\.5000",
                r"steps +12 \(3 epochs\)", r"tokens/s +1,234", r"next +yayi chat --model \S+/run *\n +yayi eval --model \S+/run --data HELD_OUT"):
        assert re.search(row, text), (row, text)


def test_drawing_the_curves_of_a_run_that_logged_nothing_yet_writes_nothing(tmp_path):
    from yayi_cli.train.curves import CURVES_FILE, write_run_curves

    run = write_run(tmp_path / "run", [{"event": "begin", "step": 0, "max_steps": 10}])
    assert write_run_curves(run) is None and not (run / CURVES_FILE).exists()
    write_jsonl(run / METRICS_FILE, sft_events(4))
    assert png_size(write_run_curves(run)) == (1280, 720)


@pytest.mark.launch
def test_a_real_two_rank_run_draws_its_curves_and_closes_with_its_own_numbers(finished_run):
    from yayi_cli.train.curves import CURVES_FILE

    curves = finished_run.output / CURVES_FILE
    assert png_size(curves) == (1280, 720)
    found = panels(draw_curves([run_series("run", read_events(finished_run.output))]))
    assert set(found) == {"Loss", "Learning rate", "Gradient norm", "Throughput"} and "eval" in found["Loss"]
    document = json.loads(finished_run.stdout)
    closing, summary = document["closing"], document["summary"]
    assert closing["steps"] == finished_run.steps and closing["curves"] == str(curves)
    assert closing["first_train_loss"]["loss"] == summary["loss_history"][0]["loss"]
    assert closing["last_train_loss"]["loss"] == summary["loss_history"][-1]["loss"]
    assert closing["last_eval_loss"] == {"step": finished_run.steps, "loss": summary["metrics"]["eval_loss"]}
    assert closing["tokens_per_second"] == summary["throughput"]["train_tokens_per_second"]


@pytest.mark.launch
def test_tensorboard_holds_the_losses_metrics_jsonl_holds(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from yayi_cli.models.run_files import TENSORBOARD_DIR

    events = EventAccumulator(str(finished_run.output / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    series = run_series("run", read_events(finished_run.output))
    for tag, points in (("train/loss", series.points["loss"]), ("eval/loss", series.eval_points["loss"])):
        logged = [(scalar.step, scalar.value) for scalar in events.Scalars(tag)]
        assert [step for step, _ in logged] == [step for step, _ in points]
        assert [value for _, value in logged] == pytest.approx([value for _, value in points], rel=1e-6)  # float32 there
