"""The closing summary of a finished run: what it did in one small table, and what to run next.

Its numbers are train_summary.json's (written by the first rank) and, for the evaluations, metrics.jsonl's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yayi_cli.models.run_files import SUMMARY_FILE
from yayi_cli.train.curves import CURVES_FILE, read_events, run_series


def closing_summary(output: Path) -> dict[str, Any] | None:
    """Steps, epochs, time, the first and last train loss, the best and last eval loss (each with its step),
    tokens/s, where the model and the curves are, and the next commands; None when the run saved no summary."""
    try:
        summary = json.loads((output / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    history = summary.get("loss_history") or []
    evals = run_series("train", read_events(output)).eval_points.get("loss", [])
    curves = output / CURVES_FILE
    return {
        "steps": history[-1]["step"] if history else None,
        "epochs": summary["metrics"].get("epoch"),
        "seconds": summary["metrics"].get("train_runtime"),
        "first_train_loss": _point(history[0]["step"], history[0]["loss"]) if history else None,
        "last_train_loss": _point(history[-1]["step"], history[-1]["loss"]) if history else None,
        "best_eval_loss": _point(*min(evals, key=lambda found: found[1])) if evals else None,
        "last_eval_loss": _point(*evals[-1]) if evals else None,
        "tokens_per_second": summary["throughput"].get("train_tokens_per_second"),
        "model": str(output),
        "curves": str(curves) if curves.is_file() else None,
        "next": [f"yayi chat --model {output}", f"yayi eval --model {output} --data HELD_OUT.jsonl"],
    }


def _point(step: int, loss: float) -> dict[str, Any]:
    return {"step": step, "loss": loss}


def _loss(found: dict[str, Any] | None) -> str:
    return "-" if found is None else f"{found['loss']:.4f} (step {found['step']})"


def print_closing_summary(closing: dict[str, Any], console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Run finished", title_justify="left", show_header=False, box=None, padding=(0, 2))
    rows = [
        ("steps", f"{closing['steps']}" + (f" ({closing['epochs']:g} epochs)" if closing["epochs"] is not None else "")),
        ("time", f"{closing['seconds']:.1f} s" if closing["seconds"] is not None else "-"),
        ("train loss", f"{_loss(closing['first_train_loss'])} -> {_loss(closing['last_train_loss'])}"),
        ("eval loss", f"best {_loss(closing['best_eval_loss'])}, last {_loss(closing['last_eval_loss'])}"
         if closing["last_eval_loss"] else "-"),
        ("tokens/s", f"{closing['tokens_per_second']:,.0f}" if closing["tokens_per_second"] else "-"),
        ("model", closing["model"]),
        ("curves", closing["curves"] or "-"),
        *((("next" if number == 0 else ""), command) for number, command in enumerate(closing["next"])),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    console.print(table, highlight=False)
