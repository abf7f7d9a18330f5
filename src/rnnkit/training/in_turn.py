"""Ensembles trained in turn: member after member, each with its own share of the budget.

``--ensemble M`` alone trains the M members side by side, each for the whole run. With
``ensemble_lead_share = s`` (0 < s < 1) they train one after another instead: member 0 (the
lead) for the fraction s of the budget (``time_budget`` and ``max_steps``), members 1..M-1 for
(1 - s) / (M - 1) each, every one a complete run of the one :class:`Trainer` with its own
schedule, seed ``seed + m``, validation and kept weights. Members that trained for different
lengths make different errors, so their average gains more than that of equal members
(measured on Tiny Shakespeare; see BENCHMARKS.md).

Layout of the run directory ``out``: ``out/members/<m>/`` is member m's own run directory (a
loadable single-model artifact, with its checkpoint); ``out/`` gets the ensemble's artifact
(the members' kept weights as one model, its validation metrics, every member's curves in
``curves.png``) once the last member is done.
An interrupted run resumes at the member it stopped in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from rnnkit import artifacts
from rnnkit.errors import UserError
from rnnkit.training.config import TrainConfig
from rnnkit.training.trainer import History, Trainer

MEMBERS_DIR = "members"


def member_shares(members: int, lead_share: float) -> list[float]:
    """[s, (1-s)/(M-1), ...]: each member's fraction of the budget."""
    if members < 2:
        raise UserError(f"ensemble_lead_share needs ensemble >= 2, got ensemble {members}")
    if not 0 < lead_share < 1:
        raise UserError(f"ensemble_lead_share must be in (0, 1), got {lead_share}")
    return [lead_share] + [(1 - lead_share) / (members - 1)] * (members - 1)


def member_train_config(train: TrainConfig, m: int, share: float) -> TrainConfig:
    """Member m's training: seed + m, and ``share`` of the time budget and of max_steps."""
    if train.time_budget is None and train.max_steps is None:
        raise UserError("an ensemble trained in turn shares a budget: set time_budget or max_steps")
    return dataclasses.replace(
        train, seed=train.seed + m,
        time_budget=None if train.time_budget is None else train.time_budget * share,
        max_steps=None if train.max_steps is None else max(1, round(train.max_steps * share)))


STOP_REASON_SUFFIX = "members trained in turn"  # the ensemble's History.stop_reason: "M members ..."


def is_in_turn(history: History) -> bool:
    """Whether ``history`` is an in-turn ensemble's (one evaluation; its step is the members' sum)."""
    return (history.stop_reason or "").endswith(STOP_REASON_SUFFIX)


def fit_in_turn(ensemble, train: TrainConfig, shares: list[float], source, loss_fn,
                evaluate_fn: Optional[Callable], run_dir=None, meta: Optional[dict] = None,
                callbacks: Callable[[TrainConfig], list] = lambda cfg: [], resume: bool = False,
                announce: bool = False, combine: Optional[Callable] = None) -> History:
    """Train ``ensemble.members`` (freshly initialised, or as a resumed run left them) one
    after another (member m on ``source`` with :func:`member_train_config`), then evaluate the
    whole ensemble and write its artifact.

    Member m is ``ensemble.member(m)`` where the ensemble has that method (a single-network
    model over the member's weights), else ``ensemble.members[m]``; its artifact records
    ``ensemble.member_task_state(task_state)`` if defined, else the task state without
    ``ensemble``. ``loss_fn`` is one loss for every member or a list of one per member.
    ``combine(ensemble)``, once every member is done, may set how they are mixed and return the
    task state to record (see ``Task.combine_members``).
    ``source`` is a single member's batch source; ``meta`` the ensemble's artifact metadata.
    With ``resume``, members already done in ``run_dir`` are loaded and an interrupted one
    continues; otherwise every member starts afresh. ``announce`` prints a line as each member
    starts. Returns the ensemble's history: one evaluation (the ensemble's) and the members' own
    histories under ``members``.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    meta = dict(meta or {})
    task_state = meta.get("task_state", {})
    single_state = (ensemble.member_task_state(task_state) if hasattr(ensemble, "member_task_state")
                    else {k: v for k, v in task_state.items() if k != "ensemble"})  # a member loads alone
    losses = loss_fn if isinstance(loss_fn, (list, tuple)) else [loss_fn] * len(shares)
    histories = []
    for m, share in enumerate(shares):
        net = ensemble.member(m) if hasattr(ensemble, "member") else ensemble.members[m]
        cfg = member_train_config(train, m, share)
        where = None if run_dir is None else run_dir / MEMBERS_DIR / str(m)
        started = resume and where is not None and (where / artifacts.CHECKPOINT / "trainer_state.json").exists()
        if started and artifacts.read_meta(where).get("status") == "complete":
            net.load_state_dict(artifacts.read_artifact(where).state_dict())
            histories.append(History.from_dict(artifacts._read_json(where / "history.json", "history")))
            continue
        if announce:
            print(f"member {m + 1}/{len(shares)}: {share:.0%} of the budget", flush=True)
        member_meta = {**meta, "task_state": single_state,
                       "in_turn": {"member": m, "shares": shares, "train": dataclasses.asdict(train)}}
        trainer = Trainer(cfg, callbacks(cfg))
        histories.append(trainer.fit(net, source, losses[m], evaluate_fn, run_dir=where, meta=member_meta, resume=started))
    ensemble.eval()
    combined = combine(ensemble) if combine is not None else None
    if combined:
        meta["task_state"] = {**task_state, **combined}
    metrics = evaluate_fn(ensemble) if evaluate_fn is not None else {}
    steps = sum(h.train[-1]["step"] if h.train else 0 for h in histories)
    record = {"step": steps, "epoch": 0, **metrics}
    history = History(eval=[record] if metrics else [], best=record if metrics else None,
                      stop_reason=f"{len(shares)} {STOP_REASON_SUFFIX}", steps_taken=sum(h.steps_taken for h in histories))
    if run_dir is not None:
        summary = {**meta, "train": dataclasses.asdict(train), "status": "complete", "step": steps, "epoch": 0,
                   "stop_reason": history.stop_reason, "in_turn": {"shares": shares},
                   "metrics": {f"val_{k}": v for k, v in metrics.items()}}
        members = [h.to_dict() for h in histories]
        files = artifacts.snapshot_files(summary, ensemble.state_dict(), {**history.to_dict(), "members": members})
        from rnnkit.plots import members_curves_png

        files["curves.png"] = members_curves_png(members, metrics.get("loss"))
        artifacts.write_run(run_dir, files, keep_extras=True)
    return history
