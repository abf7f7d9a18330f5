"""What a tune command leaves in DIR once its trials are done, rewritten after every call:

    trials.csv        one row per trial: number, state, value, seconds, evaluations, parameters
    best-config.json  the best trial's configs as a preset: ``rnnkit train TASK --config`` takes it
    best -> trials/N  a link to the best trial's run directory (``rnnkit.load(DIR/"best")``)
    tuning.png        optimisation history and parameter importances
    summary.json      the study's task, data, metric and direction, counts and best trial

The preset holds the best trial's full configs, its own seed included, as the trial asked for
them; with a study time budget the trial may have been stopped early by it (its
``stop_reason`` says so), and the preset then trains for the full schedule.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rnnkit import artifacts
from rnnkit.errors import UserError
from rnnkit.tuning.study import TRIALS_DIR, TuneSpec

BEST_LINK = "best"
PRESET_FILE = "best-config.json"
TABLE_FILE = "trials.csv"
PLOT_FILE = "tuning.png"
SUMMARY_FILE = "summary.json"


@dataclass
class TuneSummary:
    """The outcome of ``rnnkit.tune``: the best trial (its number, validation value, parameters,
    run directory and preset file), every trial as a row of the table, and the files in DIR.
    ``best`` loads the best run (the task's facade, as ``rnnkit.load``)."""

    task: str
    monitor: str
    direction: str
    best_number: int
    best_value: float
    best_params: dict
    best_dir: Path
    preset: Path
    rows: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    out: Optional[Path] = None

    @property
    def best(self):
        from rnnkit.runs import load

        return load(self.best_dir)

    def table(self) -> str:
        """The trials table as aligned text."""
        return format_table(self.rows)


def trial_rows(study) -> list[dict]:
    """One dict per trial: number, state, value, seconds, evaluations, then each parameter."""
    names = sorted({name for t in study.trials for name in t.params})
    rows = []
    for t in study.trials:
        state = t.state.name.lower() + (" (interrupted)" if t.user_attrs.get("interrupted") else "")
        row = {"number": t.number, "state": state, "value": t.value, "seconds": t.user_attrs.get("seconds"),
               "evaluations": len(t.intermediate_values)}
        row.update({name: t.params.get(name) for name in names})
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict]) -> str:
    """``rows`` as a text table with aligned columns (the header from the first row's keys)."""
    if not rows:
        return "(no trials)"
    header = list(rows[0])
    cells = [header] + [[_cell(r.get(k)) for k in header] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)  # full precision
    return buf.getvalue().encode("utf-8")


def _link_best(out: Path, number: int) -> None:
    """Point DIR/best at trials/<number> (a relative link, swapped in atomically)."""
    link, tmp = out / BEST_LINK, out / f".{BEST_LINK}.tmp-{os.getpid()}"
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link}: exists and is not the tuner's link; move it away")
    tmp.unlink(missing_ok=True)
    os.symlink(f"{TRIALS_DIR}/{number}", tmp)
    os.replace(tmp, link)


def _importances(study) -> dict:
    """Parameter importances (Optuna's default evaluator, PED-ANOVA: no extra packages); {} while
    too few trials have finished to estimate them."""
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def write_results(spec: TuneSpec, study) -> TuneSummary:
    """Write the table, preset, best link, plot and summary of the study into DIR (see the
    module docstring); a one-line error when no trial has finished."""
    from rnnkit.plots import tuning_png

    out = Path(spec.out)
    rows = trial_rows(study)
    artifacts.write_file_atomic(out / TABLE_FILE, _csv_bytes(rows))
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not finished:
        raise UserError(f"{out}: no trial has completed yet (see {out / TABLE_FILE}); run tune again to go on")
    best = study.best_trial
    preset = {"task": spec.task, "dataset": spec.data, **best.user_attrs["config"]}
    artifacts.write_file_atomic(out / PRESET_FILE, artifacts.json_bytes(preset))
    _link_best(out, best.number)
    history = [(t.number, t.value, t.state.name.lower()) for t in study.trials if t.value is not None]
    artifacts.write_file_atomic(out / PLOT_FILE, tuning_png(history, spec.direction == "minimize",
                                                            f"val {spec.monitor}", _importances(study)))
    counts = dict(Counter(r["state"].split()[0] for r in rows))
    summary = TuneSummary(spec.task, spec.monitor, spec.direction, best.number, float(best.value), dict(best.params),
                          out / TRIALS_DIR / str(best.number), out / PRESET_FILE, rows, counts, out)
    artifacts.write_file_atomic(out / SUMMARY_FILE, artifacts.json_bytes({
        "task": spec.task, "data": spec.data, "monitor": spec.monitor, "direction": spec.direction,
        "trials": counts, "best": {"number": best.number, "value": summary.best_value, "params": summary.best_params,
                                   "run": f"{TRIALS_DIR}/{best.number}", "preset": PRESET_FILE}}))
    return summary
