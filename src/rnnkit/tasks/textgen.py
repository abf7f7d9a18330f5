"""Character-level (or word-level) text generation: a language model over token ids.

Data: the corpus is split by position (first ``1 - val_fraction`` for training, the rest for
validation) and served by :class:`rnnkit.data.text.TextStream` as B contiguous streams for
truncated BPTT (state carried from batch to batch) or, for tiny texts, as sliding windows.

Model: embedding encoder -> recurrent stack -> per-step head over the vocabulary V;
loss = mean cross-entropy of the next token. Metrics over one full pass of the validation text
with the state carried through it: ``loss`` = ``nats_per_char`` (mean -ln p(next)),
``bits_per_char`` = nats / ln 2, ``perplexity`` = exp(nats) (per word for ``level="word"``).

Façade: :class:`TextGenerator` (``fit(text)``, ``sample(prime, length, ...)``, ``evaluate``).
Sampling is stateful, as in char-rnn: the prime is fed through once, then one step per
generated token with the hidden state carried; no window is ever re-run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import fused, layout, metrics, native
from rnnkit.data.batching import Batch
from rnnkit.data.text import CharVocab, TextStream, make_vocab, split_text
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.tasks.base import PreparedData, Task

BUNDLED_TEXTS = ("hello-world", "pangrams", "shakespeare-excerpt")
_EVAL_CHUNK = 1024  # steps per validation batch; any length gives the same numbers (state carried)
_NOISE_BLOCK = 256  # sampling steps of random noise drawn at once


@dataclass
class TextgenConfig:
    """Data options of the textgen task."""

    seq_len: int = 100  # T: steps per truncated-BPTT chunk (or window length)
    batch_size: int = 32  # B: contiguous streams (or windows) per batch
    val_fraction: float = 0.1  # last part of the text held out for validation (0: none)
    level: str = field(default="char", metadata={"choices": ("char", "word")})  # tokens: characters or words
    # streams: B contiguous streams, state carried (TBPTT); windows: every stride-1 window, zero state
    batching: str = field(default="streams", metadata={"choices": ("streams", "windows")})
    eval_streams: int = 1  # validation streams; 1 = every validation token scored with its full history


def bundled_text(name: str) -> str:
    """A text shipped with rnnkit (``hello-world``, ``pangrams``, ``shakespeare-excerpt``)."""
    if name not in BUNDLED_TEXTS:
        raise UserError(f"unknown bundled text {name!r}; expected one of: {', '.join(BUNDLED_TEXTS)}")
    return resources.files("rnnkit.data").joinpath("texts", f"{name}.txt").read_text(encoding="utf-8")


def read_text(data: str) -> tuple[str, dict]:
    """Resolve ``data`` (a bundled text name, a named dataset or a file path) to (text, data_info)."""
    if data in BUNDLED_TEXTS:
        return bundled_text(data), {"name": data, "bundled": True}
    from rnnkit.data import sources

    path = sources.resolve(data)
    if not isinstance(path, Path) or not path.is_file():
        raise UserError(f"data {data!r}: expected a text file or a text dataset, got {path}")
    return sources.read_text(path), {"name": data, "path": str(path), "sha256": sources.sha256_file(path)}


def prepare_text(config: TextgenConfig, text: str, vocab: Optional[CharVocab] = None) -> PreparedData:
    """Vocabulary, train/val streams and task state for ``text``."""
    if config.eval_streams < 1:
        raise UserError(f"eval_streams must be positive, got {config.eval_streams}")
    vocab = vocab or make_vocab(text, config.level)
    train_ids, val_ids = split_text(vocab.encode(text), config.val_fraction)
    train = TextStream(train_ids, config.batch_size, config.seq_len, mode=config.batching, shuffle=True)
    val = None
    if val_ids is not None:
        val = TextStream(val_ids, config.eval_streams, _EVAL_CHUNK, mode="streams", shuffle=False)
    state = {"vocab": vocab.to_dict(), "train_tokens": len(train_ids), "val_tokens": 0 if val_ids is None else len(val_ids)}
    return PreparedData(train=train, val=val, test=None, task_state=state)


def full_pass_metrics(model: SequenceModel, batches: Iterable[Batch]) -> dict:
    """Cross-entropy over every target of ``batches``, carrying the state across ``carries_state`` batches.

    Returns ``loss`` = ``nats_per_char`` = sum(-ln p(target)) / count, ``bits_per_char`` =
    nats / ln 2, ``perplexity`` = exp(nats), ``tokens`` = count.
    """
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.inference_mode():
        for batch in batches:
            logits, new_state = model(batch.inputs, state if batch.carries_state else None)  # (B, T, V)
            state = new_state if batch.carries_state else None
            total += float(F.cross_entropy(logits.flatten(0, 1).double(), batch.targets.flatten(), reduction="sum"))
            count += batch.targets.numel()
    model.train(was_training)
    if count == 0:
        raise UserError("the validation text has no tokens to score")
    nats = total / count
    return {"loss": nats, "nats_per_char": nats, "bits_per_char": metrics.bits_per_token(nats),
            "perplexity": metrics.perplexity(nats), "tokens": count}


class TextgenTask(Task):
    """The textgen job: see the module docstring."""

    name = "textgen"
    Config = TextgenConfig
    serve_input = "prime"

    def export_axes(self, task_state: dict) -> tuple[dict, dict]:
        return {0: "batch", 1: "time"}, {0: "batch", 1: "time"}  # next-token logits at every step

    def prepare(self, config: TextgenConfig, data: str, seed: int = 0) -> PreparedData:
        text, info = read_text(data)
        prepared = prepare_text(config, text)
        prepared.data_info = {**info, "chars": len(text)}
        return prepared

    def prepare_whole(self, config: TextgenConfig, data: str, task_state: dict) -> TextStream:
        """All of the text ``data`` as one stream (every next token scored once), in the trained vocabulary."""
        text, _ = read_text(data)
        ids = CharVocab.from_dict(task_state["vocab"]).encode(text, what=str(data))
        if len(ids) < 2:
            raise UserError(f"{data}: evaluation text needs at least 2 tokens")
        return TextStream(ids, 1, _EVAL_CHUNK, mode="streams", shuffle=False)

    def examples(self, batch: Batch) -> int:
        """Tokens scored (every target of the batch)."""
        return batch.targets.numel()

    def model_config(self, task_state: dict, config: TextgenConfig, model: ModelConfig) -> ModelConfig:
        if model.bidirectional:
            raise UserError("textgen needs a causal model: bidirectional must be false")
        V = len(task_state["vocab"]["tokens"])
        return replace(model, encoder="embedding", input_size=V, head="per_step", output_size=V)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Mean next-token cross-entropy; outputs (B, T, V) logits, targets (B, T) ids."""
        return F.cross_entropy(outputs.flatten(0, 1), batch.targets.flatten())

    def evaluate(self, model, batches) -> dict:
        if hasattr(batches, "epoch"):  # a BatchSource: its single, ordered pass
            batches = batches.epoch(0, 0)
        return full_pass_metrics(model, batches)

    def load(self, artifact) -> "TextGenerator":
        return TextGenerator.from_artifact(artifact)

    def add_arguments(self, verb: str, parser) -> None:
        if verb != "sample":
            return
        parser.add_argument("--prime", required=True, help="text fed through the model before sampling")
        parser.add_argument("--length", type=int, default=500, help="tokens to generate (default 500)")
        parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
        parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=None, help="keep the k most likely")
        parser.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=None, help="nucleus mass")
        parser.add_argument("--seed", type=int, default=None, help="makes the draw reproducible")
        parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=1,
                            help="continuations to draw (in one batch)")

    def run_verb(self, verb: str, facade: "TextGenerator", args) -> Optional[int]:
        if verb != "sample":
            return super().run_verb(verb, facade, args)
        out = facade.sample(args.prime, args.length, args.temperature, args.top_k, args.top_p, args.seed,
                            args.num_samples)
        for i, text in enumerate([out] if isinstance(out, str) else out):
            if i:
                print(f"\n----- sample {i + 1} -----")
            print(text)
        return 0


TASK = TextgenTask()


# -- sampling --------------------------------------------------------------------------------
def _check_sampling(length, temperature, top_k, top_p, num_samples, vocab_size):
    if length < 0:
        raise UserError(f"length must be >= 0, got {length}")
    if num_samples < 1:
        raise UserError(f"num_samples must be >= 1, got {num_samples}")
    if not temperature >= 0 or math.isinf(temperature):
        raise UserError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    return None if top_k is None or top_k >= vocab_size else int(top_k)


def filter_logits(z: Tensor, top_k: Optional[int], top_p: Optional[float]) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass top_p. z: (B, V).

    The nucleus keeps the most likely tokens, in order, while the mass before each is < top_p
    (so the most likely token is always kept).
    """
    if top_k is not None:
        kth = z.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_z, order = z.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_z.softmax(-1)
        drop = (probs.cumsum(-1) - probs) >= top_p
        z = z.scatter(-1, order, sorted_z.masked_fill(drop, float("-inf")))
    return z


class _Stepper:
    """One generation step: token ids (B,) + state -> logits (B, V) + state, with minimal overhead.

    When torch's fused kernels compute this model exactly (``fused.fused_unsupported_reason``),
    the layer's Python checks are skipped (``direct``), in one of two ways:

    * a unidirectional LSTM with rnnkit's native kernels (``kernel``): per layer ONE matmul,
      ``a = [x_t | h_{t-1}] W^T + b`` with ``W = [W_ih | W_hh]`` in the step kernels' layout
      (:mod:`rnnkit.layout`: kernel gate order, g rows doubled), then one call of
      ``rnnkit_lstm_forward_*`` for the activations, ``c_t`` and ``h_t``. The cell state travels
      as ``-2 c`` (the step kernels' form). Against ``torch.lstm_cell`` (two matmuls and ~10
      element-wise ops a layer) this does the step in one call instead of a dozen.
    * otherwise each layer is one call of torch's single-step cell kernel (``torch.lstm_cell``
      etc., C++ from end to end).

    The sequence kernel (``torch._VF.lstm``) is not used here: on CPU its oneDNN path
    re-prepares the weights on every call, which makes a T=1 call far slower than
    ``torch.lstm_cell``. Otherwise the model's own layer runs. Every way gives the
    same numbers (tested).
    """

    def __init__(self, model: SequenceModel):
        self.model, rnn = model, model.rnn
        self.embedding = model.encoder.weight  # (V, E)
        self.head_w, self.head_b = model.head.weight, model.head.bias  # (V, D*H), (V,)
        probe = self.embedding.new_zeros(1, 1, self.embedding.shape[1])
        self.direct = rnn.use_fused is not False and fused.fused_unsupported_reason(rnn, probe) is None
        self.kernel = None
        if not self.direct:
            return
        n = 4 if rnn.bias else 2
        flat = rnn.flat_weights()
        self.layers = [flat[k * n : (k + 1) * n] + ([None, None] if n == 2 else []) for k in range(rnn.num_layers)]
        self.cell = _CELL_KERNELS[rnn.cell if rnn.cell != "rnn" else f"rnn_{rnn.nonlinearity}"]
        if rnn.cell == "lstm" and not rnn.bidirectional:
            kernels = native.kernels_for("lstm", self.embedding)
            self.kernel = kernels[0] if kernels else None
        if self.kernel is not None:
            with torch.no_grad():
                self.joined = [_joined_lstm_weights(*w) for w in self.layers]  # [(W^T (F+H, 4H), b (4H,))]

    def __call__(self, tokens: Tensor, state):
        """tokens (B,) -> logits (B, V). ``state`` is the model's state for the model's own
        layer, and what ``split_state`` makes of it for the direct paths."""
        if not self.direct:
            x = F.embedding(tokens.unsqueeze(1), self.embedding)  # (B, 1, E)
            y, state = self.model.rnn(x, state)
            return torch.addmm(self.head_b, y[:, 0], self.head_w.t()), state  # (B, V)
        if self.kernel is not None:
            return self._kernel_step(tokens, state), state
        x = F.embedding(tokens, self.embedding)  # (B, E)
        lstm = self.model.rnn.cell == "lstm"
        for k, w in enumerate(self.layers):
            state[k] = self.cell(x, state[k], *w)
            x = state[k][0] if lstm else state[k]  # (B, H)
        return torch.addmm(self.head_b, x, self.head_w.t()), state  # (B, V)

    def _kernel_step(self, tokens: Tensor, state: list) -> Tensor:
        """The native LSTM step for every layer. ``state``: per layer [xh, neg_two_c, neg_two_c_next]
        (updated in place), with xh (B, F+H) = [input | h_{t-1}], neg_two_c = -2 c_{t-1} (B, H),
        plus the buffers ``gates`` (B, 4H), ``u``, ``h`` (B, H) at the end of the list."""
        *layers, gates, u, h = state
        B, H = h.shape
        layers[0][0][:, : self.embedding.shape[1]] = self.embedding[tokens]
        for k, ((wt, b), lay) in enumerate(zip(self.joined, layers)):
            xh, neg_two_c, neg_two_c_next = lay
            torch.addmm(b, xh, wt, out=gates)
            self.kernel(1, B, H, gates.data_ptr(), 0, neg_two_c.data_ptr(), neg_two_c_next.data_ptr(), 0, u.data_ptr(),
                        0, h.data_ptr(), 0, None, None, 0)
            lay[1], lay[2] = neg_two_c_next, neg_two_c
            xh[:, -H:] = h
            if k + 1 < len(layers):
                layers[k + 1][0][:, :H] = h
        return torch.addmm(self.head_b, h, self.head_w.t())  # (B, V)

    def start(self, state, batch: int):
        """The model's state after the prime ((L, 1, H) or (h, c)) -> what ``__call__`` carries
        for ``batch`` samples."""
        return self.split_state(_expand_state(state, batch))

    def split_state(self, state):
        """The model's state ((L, B, H) or (h, c)) -> what ``__call__`` carries."""
        if not self.direct:
            return state
        if self.kernel is not None:
            h, c = state
            L, B, H = h.shape
            layers = []
            for k in range(L):
                F_ = self.joined[k][0].shape[0] - H
                xh = h.new_zeros(B, F_ + H)
                xh[:, F_:] = h[k]
                layers.append([xh, layout.lstm_cell_to_step_kernel(c[k]), torch.empty_like(c[k])])
            return layers + [h.new_empty(B, 4 * H), h.new_empty(B, H), h.new_empty(B, H)]
        if isinstance(state, tuple):
            return [(h, c) for h, c in zip(state[0].unbind(0), state[1].unbind(0))]
        return list(state.unbind(0))


def _joined_lstm_weights(w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]):
    """torch's LSTM weights -> ([W_ih | W_hh]^T (F+H, 4H), bias (4H,)) in the step kernels'
    layout (:mod:`rnnkit.layout`)."""
    bias = w_ih.new_zeros(w_ih.shape[0]) if b_ih is None else b_ih + b_hh
    w, b = (layout.double_lstm_g_(layout.lstm_to_kernel_order(p), 0) for p in (torch.cat([w_ih, w_hh], 1), bias))
    return w.t().contiguous(), b


_CELL_KERNELS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell,
                 "rnn_relu": torch.rnn_relu_cell}


def _expand_state(state, batch: int):
    """(L, 1, H) -> (L, B, H) for every state tensor."""
    if isinstance(state, tuple):
        return tuple(s.expand(-1, batch, -1).contiguous() for s in state)
    return state.expand(-1, batch, -1).contiguous()


def generate(model: SequenceModel, prime_ids: Tensor, length: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, generator: Optional[torch.Generator] = None,
             num_samples: int = 1) -> Tensor:
    """Sample ``length`` tokens after ``prime_ids`` (P,) for ``num_samples`` sequences: (num_samples, length).

    The prime runs through the model once (B=1); its final state is copied to the B samples.
    Each step draws ``argmax(z + g)`` with ``z`` the filtered logits / temperature and ``g``
    Gumbel noise (``-ln E``, E ~ Exp(1)): an exact draw from ``softmax(z)`` (the Gumbel-max
    trick) that lets the noise for many steps be drawn in one call. Temperature 0 is argmax.
    """
    B = num_samples
    model.eval()
    step = model.stepper(_Stepper)  # a model of several networks steps each with this rule
    with torch.inference_mode():
        logits, state = model(prime_ids.view(1, -1))  # (1, P, V)
        logits = logits[:, -1].expand(B, -1)  # (B, V)
        state = step.start(state, B)
        out = []
        noise, plain = None, top_k is None and top_p is None
        for i in range(length):
            if temperature == 0:
                tokens = logits.argmax(-1)
            else:
                if i % _NOISE_BLOCK == 0:
                    n = min(_NOISE_BLOCK, length - i)
                    e = torch.empty(n, B, logits.shape[-1]).exponential_(generator=generator)
                    noise = e.clamp_min_(1e-30).log_().neg_()  # (n, B, V), finite
                    if plain:  # argmax(z/T + g) = argmax(z + T*g): one op per step instead of two
                        noise.mul_(temperature)
                if plain:
                    tokens = (logits + noise[i % _NOISE_BLOCK]).argmax(-1)
                else:
                    z = filter_logits(logits / temperature, top_k, top_p)
                    tokens = (z + noise[i % _NOISE_BLOCK]).argmax(-1)  # -inf stays -inf: never drawn
            out.append(tokens)
            if i + 1 < length:
                logits, state = step(tokens, state)
    return torch.stack(out, 1) if out else torch.empty(B, 0, dtype=torch.int64)  # (B, length)


# -- façade ----------------------------------------------------------------------------------
class TextGenerator:
    """Train a language model on a text and sample from it.

    ``TextGenerator(config=TextgenConfig(...), model=ModelConfig(...), train=TrainConfig(...))``
    then ``fit(text)``; or ``rnnkit.load(DIR)`` for a trained one. ``sample(prime, length)``
    generates with the hidden state carried step by step.
    """

    def __init__(self, config: Optional[TextgenConfig] = None, model: Optional[ModelConfig] = None,
                 train: Any = None):
        self.config = config or TextgenConfig()
        self.model_options = model or ModelConfig(cell="lstm", hidden_size=256, num_layers=2)
        self.train_config = train
        self.model: Optional[SequenceModel] = None
        self.vocab: Optional[CharVocab] = None
        self.history = None
        self.metrics: dict = {}

    @classmethod
    def from_model(cls, model: SequenceModel, vocab: CharVocab, config: Optional[TextgenConfig] = None) -> "TextGenerator":
        gen = cls(config, model.config)
        gen.model, gen.vocab = model.eval(), vocab
        return gen

    @classmethod
    def from_artifact(cls, artifact) -> "TextGenerator":
        """Build from a loaded artifact (model, task_state, task config)."""
        vocab = CharVocab.from_dict(artifact.task_state["vocab"])
        gen = cls.from_model(artifact.model, vocab, artifact.task_config)
        gen.metrics = dict(getattr(artifact, "metrics", {}) or {})
        return gen

    # -- training --------------------------------------------------------------------------
    def fit(self, text: str, out: Optional[Union[str, Path]] = None) -> "TextGenerator":
        """Train on ``text`` with the shared Trainer (validation loss selects the best weights);
        ``out``, a run directory, also receives the artifact."""
        from rnnkit.training.config import TrainConfig
        from rnnkit.training.runner import fit_prepared

        prepared = prepare_text(self.config, text)
        self.vocab = CharVocab.from_dict(prepared.task_state["vocab"])
        model_config = TASK.model_config(prepared.task_state, self.config, self.model_options)
        train = self.train_config or TrainConfig()
        self.model = TASK.new_model(model_config, prepared.task_state, self.config, train.seed)
        meta = TASK.run_meta(model_config, self.config, prepared.task_state, {"name": "<text>", "chars": len(text)})
        self.history = fit_prepared(TASK, self.model, prepared, train, self.config, out, meta, progress=False)
        val = prepared.val
        self.metrics = TASK.evaluate(self.model, val) if val is not None else {}
        self.model.eval()
        return self

    def _require_model(self) -> SequenceModel:
        if self.model is None:
            raise UserError("this TextGenerator has no model yet: call fit(text) or rnnkit.load(DIR)")
        return self.model

    # -- job verbs -------------------------------------------------------------------------
    def evaluate(self, text: str) -> dict:
        """Full-pass metrics (``loss``, ``nats_per_char``, ``bits_per_char``, ``perplexity``) on ``text``."""
        model = self._require_model()
        ids = self.vocab.encode(text, what="evaluation text")
        if len(ids) < 2:
            raise UserError("evaluation text needs at least 2 tokens")
        stream = TextStream(ids, self.config.eval_streams, _EVAL_CHUNK, mode="streams", shuffle=False)
        return full_pass_metrics(model, stream.epoch(0, 0))

    def sample(self, prime: str, length: int = 200, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, seed: Optional[int] = None,
               num_samples: int = 1) -> Union[str, list]:
        """Generate ``length`` tokens after ``prime``; returns prime + generated text.

        temperature 0 is greedy (argmax); top_k keeps the k most likely tokens; top_p keeps the
        smallest set of most likely tokens whose mass reaches top_p. ``seed`` makes the draw
        reproducible. ``num_samples`` > 1 samples that many continuations in one batch and
        returns a list of strings.
        """
        model = self._require_model()
        if not prime:
            raise UserError("prime must contain at least one character")
        top_k = _check_sampling(length, temperature, top_k, top_p, num_samples, len(self.vocab))
        prime_ids = self.vocab.encode(prime, what="prime")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        ids = generate(model, prime_ids, length, temperature, top_k, top_p, generator, num_samples)
        texts = [prime + self.vocab.decode(row) for row in ids]
        return texts[0] if num_samples == 1 else texts
