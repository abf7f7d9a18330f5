"""Ensembles as composition: finished runs of one task and data, averaged into one artifact.

``rnnkit ensemble DIR1 DIR2 ... --out DIR [--weights equal|validation]``, or in Python
``rnnkit.ensemble([DIR1, DIR2], out=DIR, weights="equal")``. Training knows nothing of this:
train the members with ``rnnkit train`` (each its own seed, loss, budget, even architecture),
then join them here.

The members must be runs of the same task on the same data with the same data options: the
part of the task state that prepares inputs and reads outputs (``Task.ensemble_key``:
vocabulary, scaler, labels, windows) must be equal, or a one-line error names what differs.
The ensemble's output is ``Task.average_outputs`` of the members' outputs: the weighted mean of
the next-token or class probabilities (textgen, textclass, seqclass) or of the forecasts. While
sampling, each member carries its own state.

Weights: ``equal``, or ``validation``: chosen on the validation split by :func:`fit_weights`,
cheaply, from one pass of each member: the probability mixture with the highest likelihood
(EM, :func:`mixture_weights`) or the forecast mix with the lowest MSE (least squares on the
simplex, :func:`simplex_least_squares`). Either keeps a single member when that is better, so
validation weights are never worse on validation than the best member.

Layout (``artifacts.FORMAT_VERSION`` 2), self-contained and pickle-free, written atomically::

    DIR/artifact.json        format, format_version 2, task, ensemble {weighting, weights,
                             members [{dir, source, metrics}]}, the members' task_config,
                             task_state and data, the ensemble's validation metrics
    DIR/members/<i>/         member i's artifact.json, weights and history.json, copied

``rnnkit.load(DIR)`` returns the task's facade over an :class:`EnsembleModel`, so ``sample``,
``evaluate``, ``predict``, ``serve``, ``export`` and ``info`` treat it like any run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit import artifacts, rundir
from rnnkit.errors import UserError
from rnnkit.tasks import get_task
from rnnkit.tasks.artifact import Artifact, model_line, read_artifact

MEMBERS_DIR = "members"
WEIGHTINGS = ("equal", "validation")


# ----------------------------------------------------------------------------- the averaging model


class EnsembleModel(nn.Module):
    """M finished networks used as one; every member sees the same inputs.

    ``forward(inputs, state, lengths) -> (outputs, state)``: each member's ``(outputs, state)``,
    the outputs combined by ``average(outputs, weights)`` (the task's ``average_outputs``) into
    one tensor of a member's output shape. ``state`` is None or a list of M member states (member
    m's own ``(L*D, B, H)`` tensor or ``(h, c)`` tuple; None for a stateless member).
    ``forecast(x (B, L, F), K) -> (B, K, C)``: forecasting members' forecasts, combined.
    ``weights`` (M,): a buffer, not saved (the artifact holds them).
    """

    config = None  # a facade takes its model's config as options for fit(); an ensemble is not fitted

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float],
                 average: Callable[[list, Tensor], Tensor]):
        super().__init__()
        if len(members) != len(weights):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), persistent=False)
        self._average = average

    def state_layers(self) -> list:
        """Per member the Recurrent that carries its state (None: a stateless member)."""
        return [net.state_layers()[0] for net in self.members]

    def average(self, outputs: list) -> Tensor:
        """The members' outputs (M tensors of one shape) -> one, by the task's rule and the weights."""
        return self._average(outputs, self.weights)

    def forward(self, inputs: Tensor, state: Optional[list] = None, lengths: Optional[Tensor] = None):
        states = state if state is not None else [None] * len(self.members)
        outputs, new_states = [], []
        for net, member_state in zip(self.members, states):
            y, member_state = net(inputs, member_state, lengths)
            outputs.append(y)
            new_states.append(member_state)
        carried = None if all(s is None for s in new_states) else new_states
        return self.average(outputs), carried

    @torch.no_grad()
    def forecast(self, x: Tensor, horizon: Optional[int] = None) -> Tensor:
        """(B, L, F) scaled windows -> (B, K, C): the members' ``forecast`` combined."""
        return self.average([net.forecast(x, horizon) for net in self.members])

    def stepper(self, make_stepper: Callable) -> "AveragedStepper":
        """Sampling one step at a time: ``make_stepper(member)`` (the task's stepper) per member."""
        return AveragedStepper(self, make_stepper)


class AveragedStepper:
    """One generation step of an :class:`EnsembleModel`: every member's own stepper with its own
    carried state, then the members' outputs combined. A stepper has ``start(state, B)`` (the
    state after the prime, batch 1, for B samples) and ``__call__(tokens (B,), state) ->
    (outputs (B, V), state)``; here ``state`` is the list of the members' states."""

    def __init__(self, model: EnsembleModel, make_stepper: Callable):
        self.average = model.average
        self.steppers = [make_stepper(net) for net in model.members]

    def start(self, state: list, batch: int) -> list:
        return [step.start(member_state, batch) for step, member_state in zip(self.steppers, state)]

    def __call__(self, tokens: Tensor, state: list):
        outputs = []
        for m, step in enumerate(self.steppers):
            y, state[m] = step(tokens, state[m])
            outputs.append(y)
        return self.average(outputs), state


# ----------------------------------------------------------------------------- weights


def fit_weights(task, models: list, batches: list) -> list:
    """Ensemble weights (>= 0, sum 1) chosen on the validation ``batches`` from what the task
    measures there (``Task.ensemble_evidence``): the probability mixture with the highest
    likelihood of the targets, or the forecasts' least squares on the simplex."""
    kind, *evidence = task.ensemble_evidence(models, batches)
    return {"likelihood": mixture_weights, "squares": simplex_least_squares}[kind](*evidence)


def _best_of(candidates: list, loss: Callable) -> list:
    """The candidate weight vector with the lowest ``loss``, also trying each member alone and equal
    weights (so the result is never worse than the best member); ties go to the earlier one."""
    M = len(candidates[0])
    vertices = [np.eye(M)[m] for m in range(M)]
    options = [np.asarray(w, dtype=np.float64) for w in candidates] + [np.full(M, 1.0 / M)] + vertices
    best = min(options, key=loss)
    return [float(v) for v in best]


def mixture_weights(log_likelihoods: Tensor, steps: int = 500) -> list:
    """Weights w (M,), w >= 0, sum 1, maximising the validation log-likelihood of the mixture,
    ``mean_n log sum_m w_m p_m(y_n)``, from ``log_likelihoods`` (M, N) = log p_m(y_n).

    EM: responsibilities ``r_mn = w_m p_m(y_n) / sum_j w_j p_j(y_n)``, then ``w_m = mean_n r_mn``;
    each update never lowers the (concave) objective, so from equal weights it climbs to the best
    mixture (stopped when no weight moves by 1e-9, or after ``steps``).
    """
    logp = log_likelihoods.double()
    M = logp.shape[0]
    w = torch.full((M,), 1.0 / M, dtype=torch.float64)
    for _ in range(steps):
        responsibilities = torch.softmax(logp + w.log().unsqueeze(1), dim=0)  # (M, N)
        new = responsibilities.mean(1)
        done = float((new - w).abs().max()) < 1e-9
        w = new
        if done:
            break

    def nll(weights: np.ndarray) -> float:
        log_w = torch.from_numpy(weights).log()  # -inf for a member left out
        return -float(torch.logsumexp(logp + log_w.unsqueeze(1), dim=0).mean())

    return _best_of([w.numpy()], nll)


def _project_to_simplex(v: np.ndarray) -> np.ndarray:
    """The nearest point (Euclidean) of the simplex {w >= 0, sum w = 1} (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[k] / (k + 1), 0.0)


def simplex_least_squares(predictions: np.ndarray, truth: np.ndarray, steps: int = 5000) -> list:
    """Weights w (M,), w >= 0, sum 1, minimising ``mean((sum_m w_m predictions[m] - truth)^2)``;
    predictions (M, D), truth (D,).

    The MSE is the quadratic ``w'Gw - 2 w'c + const`` (G = P P' / D, c = P y / D), so only the
    M x M Gram matrix is needed: projected gradient descent with step 1 / (2 max eig G) reaches
    its minimum on the simplex (convex); stopped when no weight moves by 1e-12.
    """
    P, y = predictions.reshape(len(predictions), -1).astype(np.float64), truth.reshape(-1).astype(np.float64)
    G, c = P @ P.T / y.size, P @ y / y.size
    step = 1.0 / max(2.0 * float(np.linalg.eigvalsh(G).max()), 1e-300)
    w = np.full(len(P), 1.0 / len(P))
    for _ in range(steps):
        new = _project_to_simplex(w - step * (2.0 * G @ w - 2.0 * c))
        done = float(np.abs(new - w).max()) < 1e-12
        w = new
        if done:
            break
    return _best_of([w], lambda v: float(v @ G @ v - 2.0 * v @ c))


# ----------------------------------------------------------------------------- reading


class EnsembleArtifact(Artifact):
    """A read ensemble directory: ``meta`` (its artifact.json), ``members`` (each member's
    :class:`~rnnkit.tasks.artifact.Artifact`) and ``weights``. ``build_model()`` returns the
    :class:`EnsembleModel`; ``model_config`` and ``train_config`` are the first member's (the
    members share the encoder and the input/output sizes, and the seed that split the data)."""

    def __init__(self, path, meta: dict):
        super().__init__(path, meta)
        listed = meta["ensemble"].get("members", [])
        if len(listed) < 2 or len(meta["ensemble"].get("weights", ())) != len(listed):
            raise UserError(f"{self.path / artifacts.ARTIFACT_JSON}: damaged ensemble (members and weights)")
        self.members = [read_artifact(self.path / MEMBERS_DIR / str(i)) for i in range(len(listed))]

    weights = property(lambda self: [float(w) for w in self.meta["ensemble"]["weights"]])
    model_config = property(lambda self: self.members[0].model_config)
    train_config = property(lambda self: self.members[0].train_config)

    required = ("ensemble",)

    def description(self) -> dict:
        return {"ensemble": self.meta["ensemble"]}

    def export_state(self, layers: list) -> dict:
        """Member m's state is ``h0_m`` (``c0_m``); the graph's outputs are the weighted average."""
        return {"members": layers, "weights": self.weights}

    def model_lines(self, parameters: int) -> list:
        ensemble = self.meta["ensemble"]
        weights = ", ".join(f"{w:.3g}" for w in ensemble["weights"])
        head = (f"ensemble of {len(self.members)} runs, {ensemble['weighting']} weights {weights}, "
                f"{parameters:,} parameters in all")
        return [head] + [f"member {i}: {model_line(member.meta['model'])} (from {entry.get('source', '?')})"
                         for i, (member, entry) in enumerate(zip(self.members, ensemble["members"]))]

    def state_dict(self) -> dict:
        """Every member's checked weights, named as in the EnsembleModel (``members.<i>.<name>``)."""
        return {f"members.{i}.{k}": v for i, member in enumerate(self.members) for k, v in member.state_dict().items()}

    def build_model(self, device="cpu") -> EnsembleModel:
        members = [member.build_model(device) for member in self.members]
        return EnsembleModel(members, self.weights, get_task(self.task).average_outputs).to(device).eval()


# ----------------------------------------------------------------------------- building


def _read_members(dirs: Sequence) -> list:
    """The member runs, checked: at least two, distinct, finished single runs of one task."""
    if len(dirs) < 2:
        raise UserError(f"an ensemble needs at least two runs, got {len(dirs)}")
    arts, seen = [], set()
    for d in dirs:
        meta = artifacts.read_meta(d)
        where = Path(d).resolve()
        if where in seen:
            raise UserError(f"{d}: given twice; an ensemble's members are different runs")
        seen.add(where)
        if "ensemble" in meta:
            raise UserError(f"{d}: already an ensemble; pass its member runs ({Path(d) / MEMBERS_DIR}/<i>) instead")
        art = Artifact(d, meta)
        if art.meta.get("status", "complete") != "complete":
            raise UserError(f"{d}: the run is not finished (status {art.meta.get('status')!r}); "
                            f"`rnnkit resume {d}` first")
        if arts and art.task != arts[0].task:
            raise UserError(f"{d}: a {art.task} run, {arts[0].path} a {arts[0].task} run; "
                            f"an ensemble's members are runs of one task")
        arts.append(art)
    return arts


def check_members(arts: list) -> None:
    """One-line error unless every member shares the first's data (sha256) and task state key."""
    task, first = get_task(arts[0].task), arts[0]
    key = task.ensemble_key(first.task_state)
    for art in arts[1:]:
        ours, theirs = art.data.get("sha256"), first.data.get("sha256")
        if ours and theirs and ours != theirs:
            raise UserError(f"{art.path}: trained on other data than {first.path} (sha256 {str(ours)[:12]}... "
                            f"vs {str(theirs)[:12]}...); an ensemble's members share their data")
        other = task.ensemble_key(art.task_state)
        for name in [*key, *(k for k in other if k not in key)]:
            if _canonical(key.get(name)) != _canonical(other.get(name)):
                raise UserError(f"{art.path}: its task state {name!r} differs from {first.path}'s; an ensemble's "
                                f"members need the same data and data options")


def _canonical(value) -> str:
    """A JSON value as one string, so that equal task states compare equal (NaN included)."""
    return json.dumps(value, sort_keys=True)


def _validation_batches(first: Artifact, data: Optional[str], required: bool) -> Optional[list]:
    """The validation batches of the members' data (prepared as the first member's run did).
    When they are not ``required`` (equal weights: only the ensemble's metrics need them) and the
    data is not at hand, None with a warning that says why."""
    try:
        data = data or first.data.get("source")
        if not data:
            raise UserError(f"{first.path}: no data source recorded; pass --data")
        seed = first.train_config.seed
        prep = get_task(first.task).prepare(first.task_config, data, seed)
        if prep.val is None:
            raise UserError(f"{data}: no validation split for this task config")
        return list(prep.val.epoch(0, seed))
    except UserError as exc:
        if required:
            raise UserError(f"--weights validation: {exc}") from None
        warnings.warn(f"the ensemble is saved without validation metrics: {exc}")
        return None


def _member_files(art: Artifact, index: int) -> dict:
    """{members/<i>/<name>: bytes} of a member: artifact.json, its weights (checked), history.json."""
    weights = art.meta["weights"]
    names = [artifacts.ARTIFACT_JSON, weights.get("file", artifacts.WEIGHTS)]
    names += ["history.json"] if (art.path / "history.json").is_file() else []
    files = {f"{MEMBERS_DIR}/{index}/{name}": (art.path / name).read_bytes() for name in names}
    blob = files[f"{MEMBERS_DIR}/{index}/{names[1]}"]
    if weights.get("sha256") and artifacts.sha256_bytes(blob) != weights["sha256"]:
        raise UserError(f"{art.path / names[1]}: damaged weights (sha256 does not match artifact.json)")
    return files


def _val_metrics(metrics: Optional[dict]) -> dict:
    """The numbers of a task's evaluation, named as a run records them (``val_<name>``)."""
    return {f"val_{k}": v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}


def _ensemble_meta(arts: list, weighting: str, weights: list, metrics: dict, member_metrics: list) -> dict:
    """The ensemble's artifact.json; each member's ``metrics`` are on the ensemble's validation
    batches (empty without them; the member's own artifact keeps its training-time ones)."""
    first = arts[0]
    members = [{"dir": f"{MEMBERS_DIR}/{i}", "source": str(art.path.resolve()), "metrics": _val_metrics(m)}
               for i, (art, m) in enumerate(zip(arts, member_metrics))]
    return {**artifacts.header(), "task": first.task, "status": "complete",
            "ensemble": {"weighting": weighting, "weights": weights, "members": members},
            "task_config": first.meta.get("task_config", {}), "task_state": first.task_state, "data": first.data,
            "metrics": _val_metrics(metrics)}


def build_ensemble(dirs: Sequence, out, weights: str = "equal", data: Optional[str] = None,
                   overwrite: bool = False) -> EnsembleArtifact:
    """Check the runs ``dirs``, choose the weights, evaluate the ensemble on the validation split
    (when the data is at hand) and write the ensemble artifact ``out``; returns it read back."""
    if weights not in WEIGHTINGS:
        raise UserError(f"--weights: expected one of {', '.join(WEIGHTINGS)}, got {weights!r}")
    out = Path(out)
    arts = _read_members(dirs)
    check_members(arts)
    with rundir.writing(out, replace=overwrite):
        _write_ensemble(get_task(arts[0].task), arts, out, weights, data)
    return EnsembleArtifact(out, artifacts.read_meta(out))


def _write_ensemble(task, arts: list, out: Path, weights: str, data: Optional[str]) -> None:
    """:func:`build_ensemble` once ``out`` is held for writing."""
    files = {name: blob for i, art in enumerate(arts) for name, blob in _member_files(art, i).items()}
    models = [art.build_model() for art in arts]
    batches = _validation_batches(arts[0], data, required=weights == "validation")
    chosen = fit_weights(task, models, batches) if weights == "validation" else [1.0 / len(arts)] * len(arts)
    model = EnsembleModel(models, chosen, task.average_outputs).eval()
    evaluate = (lambda net: None) if batches is None else (lambda net: task.evaluate(net, batches))  # noqa: E731
    meta = _ensemble_meta(arts, weights, chosen, evaluate(model), [evaluate(net) for net in models])
    artifacts.write_run(out, {artifacts.ARTIFACT_JSON: artifacts.json_bytes(meta), **files}, keep_extras=False)
