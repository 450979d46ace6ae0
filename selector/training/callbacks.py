"""Per-example training dynamics measured inside the training loop, and dynamic pruning.

The fine-tuning loop (:mod:`selector.training.finetune`) calls these on every forward pass and at every epoch
boundary; :class:`DynamicsRecorder` collects the numbers and writes them in the ``dynamics.parquet`` format of
:mod:`selector.dynamics` (one row per ``(id, epoch)``, recorded when the example is presented, as Toneva et al.
record forgetting events):

- ``loss``: mean cross-entropy over the example's answer tokens (>= 0).
- ``correct``: every answer token's argmax equals the target.
- ``accuracy``: share of answer tokens whose argmax equals the target (forgetting events count on it).
- ``el2n``: mean over answer tokens of ``||softmax(logits) - onehot(target)||_2`` (0..sqrt(2)).
- ``grad_norm``: Frobenius norm of the gradient of the example's loss w.r.t. the output-embedding (``lm_head``)
  weights, in closed form from the error vectors and the ``lm_head`` inputs (last-layer GraNd; NaN unless
  ``dynamics_grad_norm``).
- ``curvature``: finite-difference Hutchinson estimate ``mean_v ||g(e + h v) - g(e)||^2 / h^2`` of the loss's
  curvature w.r.t. the language model's input embeddings ``e`` (image features and text tokens), Rademacher
  ``v``, as in Garg & Roy's code; measured after each epoch with the model in eval mode, in fp32 with autocast off
  whatever the training precision (NaN unless ``dynamics_curvature``).
- ``n_tokens`` (answer tokens; 0 makes every other column NaN), ``step`` (global optimizer step when seen).

:mod:`selector.coreset` turns the table into forgetting / EL2N / GraNd / curvature scores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from selector.coreset import unforgettable_order
from selector.dynamics import COLUMNS, read_dynamics, write_dynamics

logger = logging.getLogger(__name__)


def token_statistics(logits, labels, hidden=None, *, ignore_index: int = -100) -> dict[str, Any]:
    """Training loss and per-example statistics from one forward pass.

    Args:
        logits: ``(B, T, V)`` model logits.
        labels: ``(B, T)`` targets, ``ignore_index`` outside answers (not yet shifted).
        hidden: optional ``(B, T, d)`` inputs of the ``lm_head``; enables ``grad_norm``.

    Returns:
        ``{"loss": scalar tensor (token-mean over the batch, differentiable), "example_loss": (B,) differentiable
        mean answer loss per example (0 where there is no answer token), "per_example": {name: float tensor
        (B,)}}`` with ``loss``, ``correct``, ``accuracy``, ``el2n``, ``grad_norm``, ``n_tokens`` (NaN where an
        example has no answer token; ``grad_norm`` NaN without ``hidden``).
    """
    import torch

    shift_logits = logits[:, :-1]
    shift_labels = labels[:, 1:]
    mask = shift_labels != ignore_index
    batch_size = labels.shape[0]
    rows = mask.nonzero(as_tuple=True)[0]
    targets = shift_labels[mask]
    logp = torch.log_softmax(shift_logits[mask].float(), dim=-1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    n_tokens = mask.sum(dim=1)
    total = nll.sum() / n_tokens.sum().clamp(min=1)
    denom = n_tokens.clamp(min=1).float()
    example_loss = torch.zeros(batch_size, device=logits.device).index_add(0, rows, nll) / denom
    with torch.no_grad():
        per_loss = example_loss.detach()
        wrong = (logp.argmax(dim=-1) != targets).float()
        n_wrong = torch.zeros(batch_size, device=logits.device).index_add_(0, rows, wrong)
        err = logp.exp()
        err[torch.arange(len(targets), device=err.device), targets] -= 1.0
        el2n = torch.zeros(batch_size, device=logits.device).index_add_(0, rows, err.norm(dim=1)) / denom
        grad_norm = torch.full((batch_size,), float("nan"), device=logits.device)
        if hidden is not None:
            h = hidden[:, :-1][mask].float()
            for b in range(batch_size):
                sel = rows == b
                if sel.any():
                    e_b, h_b = err[sel], h[sel]
                    # ||sum_t e_t h_t^T||_F^2 = sum_{t,s} (e_t . e_s)(h_t . h_s); avoids forming the V x d matrix.
                    sq = ((e_b @ e_b.T) * (h_b @ h_b.T)).sum().clamp(min=0)
                    grad_norm[b] = sq.sqrt() / sel.sum()
        empty = n_tokens == 0
        nan = torch.tensor(float("nan"), device=logits.device)
        per_example = {
            "loss": torch.where(empty, nan, per_loss),
            "correct": torch.where(empty, nan, (n_wrong == 0).float()),
            "accuracy": torch.where(empty, nan, 1.0 - n_wrong / denom),
            "el2n": torch.where(empty, nan, el2n),
            "grad_norm": torch.where(empty, nan, grad_norm),
            "n_tokens": n_tokens.float(),
        }
    return {"loss": total, "example_loss": example_loss, "per_example": per_example}


class LMHeadInputs:
    """Context manager that captures the input of the output-embedding layer on each forward pass."""

    def __init__(self, model):
        self.module = model.get_output_embeddings()
        self.value = None
        self._handle = None

    def _hook(self, module, args):
        self.value = args[0]

    def __enter__(self):
        if self.module is not None:
            self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
        self.value = None


def _decoder(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    getter = getattr(base, "get_decoder", None)
    return getter() if getter is not None else None


def curvature(model, batch: dict[str, Any], *, h: float = 1e-3, n_probes: int = 1, seed: int = 0):
    """Per-example input loss curvature (see module docstring); ``(B,)`` float tensor, NaN where not measurable.

    Always computed in fp32 (fp64 for a float64 model) with autocast off, whatever the training precision: the
    finite difference ``g(e + h v) - g(e)`` with ``h = 1e-3`` is below bf16's resolution (8 bits of mantissa), so
    under bf16 autocast or with bf16 weights the scores are rounding noise (Spearman 0.46 / 0.62 against a
    float64 reference on a tiny model, 0.99+ in fp32). Weights stored in a half type are upcast in place for the
    measurement and cast back after it (exact: every half value is a float32 value); this costs a float32 copy of
    those weights for the duration. An Accelerate-prepared model's autocast wrapper is bypassed too.

    Each example's loss depends only on its own inputs, so one backward pass of the summed per-example losses
    gives every example's input gradient at once.
    """
    import torch

    decoder = _decoder(model)
    labels = batch["labels"]
    nan = torch.full((labels.shape[0],), float("nan"))
    if decoder is None:
        logger.warning("curvature: %s has no get_decoder(); recording NaN", type(model).__name__)
        return nan
    compute = torch.float64 if any(p.dtype == torch.float64 for p in model.parameters()) else torch.float32
    inputs = {
        k: (v.to(compute) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in batch.items()
        if k not in ("labels", "index")
    }
    forward = _forward_without_autocast(model)
    state: dict[str, Any] = {}

    def pre_hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return None
        leaf = embeds.detach()
        if state.get("v") is not None:
            leaf = leaf + h * state["v"].to(leaf.dtype)
        leaf = leaf.detach().requires_grad_(True)
        state["leaf"] = leaf
        kwargs["inputs_embeds"] = leaf
        return args, kwargs

    def grads():
        out = forward(**inputs)
        if state.get("leaf") is None:
            return None
        per_loss = token_statistics(out.logits, labels)["example_loss"]
        (g,) = torch.autograd.grad(per_loss.sum(), state["leaf"])
        return g.to(compute)

    handle = decoder.register_forward_pre_hook(pre_hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    device_type = labels.device.type
    restore = _upcast(model, compute)
    try:
        with torch.enable_grad(), torch.autocast(device_type=device_type, enabled=False):
            state["v"] = None
            base = grads()
            if base is None:
                logger.warning("curvature: the decoder got no inputs_embeds; recording NaN")
                return nan
            generator = torch.Generator().manual_seed(seed)
            mask = batch.get("attention_mask")
            total = torch.zeros(labels.shape[0], device=base.device, dtype=compute)
            for _ in range(n_probes):
                v = torch.randint(0, 2, base.shape, generator=generator).to(base.device, base.dtype) * 2 - 1
                if mask is not None and mask.shape == base.shape[:2]:
                    v = v * mask[..., None].to(v.dtype)
                state["v"] = v
                diff = grads() - base
                total += (diff**2).flatten(1).sum(dim=1) / (h * h)
    finally:
        handle.remove()
        restore()
        model.train(was_training)
    result = (total / n_probes).float().cpu()
    empty = (labels[:, 1:] != -100).sum(dim=1).cpu() == 0
    return torch.where(empty, nan, result)


def _forward_without_autocast(model):
    """``model``'s own forward, skipping an instance-level wrapper (Accelerate's mixed-precision ``forward``
    enters autocast itself, which an outer ``autocast(enabled=False)`` cannot switch off)."""
    if "forward" in vars(model):
        return type(model).forward.__get__(model)
    return model


def _upcast(model, dtype):
    """Cast floating parameters and buffers narrower than ``dtype`` to ``dtype`` in place (the Parameter objects,
    and so the optimizer's references, stay the same); return a function that casts them back."""
    import torch

    changed = []
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64, dtype):
            changed.append((tensor, tensor.dtype))
            tensor.data = tensor.data.to(dtype)

    def restore():
        for tensor, original in changed:
            tensor.data = tensor.data.to(original)

    return restore


class DynamicsRecorder:
    """Collects per-example records in memory and writes ``dynamics.parquet`` atomically.

    Example:
        >>> rec = DynamicsRecorder(["a", "b"])
        >>> rec.add(epoch=0, step=1, index=[1, 0], stats={"loss": [0.5, 2.0], "correct": [1, 0]})
        >>> rec.columns()["id"].tolist(), rec.columns()["correct"].tolist()
        (['a', 'b'], [False, True])
    """

    def __init__(self, ids: list[str]):
        self.ids = list(ids)
        self.records: dict[tuple[int, int], dict[str, Any]] = {}

    def add(self, epoch: int, step: int, index, stats: dict[str, Any]) -> None:
        """Record a batch; a repeated ``(index, epoch)`` (distributed padding) keeps the first record."""
        index = np.asarray(index).tolist()
        cols = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
        for k, i in enumerate(index):
            key = (int(i), int(epoch))
            if key in self.records:
                continue
            rec = {name: float(col[k]) for name, col in cols.items()}
            rec["step"] = int(step)
            self.records[key] = rec

    def add_curvature(self, epoch: int, index, values) -> None:
        for i, value in zip(np.asarray(index).tolist(), np.asarray(values, dtype=np.float64).tolist()):
            rec = self.records.setdefault((int(i), int(epoch)), {"step": -1})
            rec["curvature"] = value

    def columns(self) -> dict[str, np.ndarray]:
        keys = sorted(self.records, key=lambda k: (k[1], self.ids[k[0]]))
        nan = float("nan")
        out: dict[str, list] = {name: [] for name in COLUMNS}
        for index, epoch in keys:
            rec = self.records[(index, epoch)]
            out["id"].append(self.ids[index])
            out["epoch"].append(epoch)
            out["step"].append(rec.get("step", -1))
            for name in ("loss", "accuracy", "el2n", "grad_norm", "curvature", "n_tokens"):
                out[name].append(rec.get(name, nan))
            c = rec.get("correct", nan)
            out["correct"].append(None if c != c else bool(c))
        return {
            "id": np.asarray(out["id"], dtype=object),
            "epoch": np.asarray(out["epoch"], dtype=np.int64),
            "step": np.asarray(out["step"], dtype=np.int64),
            "loss": np.asarray(out["loss"], dtype=np.float32),
            "correct": np.asarray(out["correct"], dtype=object),
            "accuracy": np.asarray(out["accuracy"], dtype=np.float32),
            "el2n": np.asarray(out["el2n"], dtype=np.float32),
            "grad_norm": np.asarray(out["grad_norm"], dtype=np.float32),
            "curvature": np.asarray(out["curvature"], dtype=np.float32),
            "n_tokens": np.nan_to_num(np.asarray(out["n_tokens"], dtype=np.float64), nan=0.0).astype(np.int64),
        }

    def save(self, path: str) -> None:
        """Write the records as ``dynamics.parquet`` (atomically; see :func:`selector.dynamics.write_dynamics`)."""
        write_dynamics(path, self.columns())

    def load(self, path: str) -> None:
        """Restore records from a ``dynamics.parquet`` written by :meth:`save` (for resume)."""
        table = read_dynamics(path)
        position = {row_id: k for k, row_id in enumerate(self.ids)}
        for k, row_id in enumerate(table["id"].tolist()):
            if row_id not in position:
                continue
            rec = {
                name: float(table[name][k])
                for name in ("loss", "accuracy", "el2n", "grad_norm", "curvature", "n_tokens")
                if name in table
            }
            c = table["correct"][k]
            rec["correct"] = float("nan") if c is None else float(bool(c))
            rec["step"] = int(table["step"][k])
            self.records[(position[row_id], int(table["epoch"][k]))] = rec


def initial_removal(n_rows: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The example level's first step ("Peeling the Onion", Kong et al. 2023): before training, a random
    ``round(fraction * n_rows)`` rows go to the removed pool.

    Returns:
        ``(active, pool)`` as sorted row indices (the pool in its random draw order).
    """
    rng = np.random.default_rng([seed, 0x0917])
    order = rng.permutation(n_rows)
    n_removed = int(round(fraction * n_rows))
    return sorted(order[n_removed:].tolist()), order[:n_removed].tolist()


def prune_step(
    active: list[int],
    pool: list[int],
    recorder: DynamicsRecorder,
    n_swap: int,
    *,
    accuracy_threshold: float = 0.5,
    seed: int | list[int] = 0,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """One epoch boundary of the example level of "Peeling the Onion" (official code ``ZLKong/Tri-Level-ViT``).

    Drops the ``n_swap`` most unforgettable active examples (fewest forgetting events, learned now, lowest loss;
    "learned" = token accuracy >= ``accuracy_threshold``) and puts back as many examples drawn at random (seeded)
    from the removed pool, which the dropped ones then join; the active set keeps its size. At most
    ``len(pool)`` are swapped. Active examples never recorded (e.g. not reached before a resume) are not
    candidates for dropping.

    Returns:
        ``(new_active, new_pool, dropped, restored)`` as dataset row indices.
    """
    k = min(int(n_swap), len(pool))
    if k <= 0 or not recorder.records:
        return list(active), list(pool), [], []
    cols = recorder.columns()
    active_ids = {recorder.ids[i] for i in active}
    keep = np.array([row_id in active_ids for row_id in cols["id"]], dtype=bool)
    has_accuracy = not np.all(np.isnan(cols["accuracy"][keep]))
    learned = cols["accuracy"][keep] if has_accuracy else cols["correct"][keep]
    order = unforgettable_order(
        cols["id"][keep],
        cols["epoch"][keep],
        learned,
        cols["loss"][keep],
        threshold=accuracy_threshold if has_accuracy else 1.0,
    )
    position = {row_id: i for i, row_id in enumerate(recorder.ids)}
    dropped = [position[row_id] for row_id in order[:k]]
    k = len(dropped)
    dropped_set = set(dropped)
    draw = np.random.default_rng(seed).permutation(len(pool))
    restored = [pool[j] for j in draw[:k]]
    restored_set = set(restored)
    new_active = sorted([i for i in active if i not in dropped_set] + restored)
    new_pool = [i for i in pool if i not in restored_set] + dropped
    return new_active, new_pool, dropped, restored


__all__ = ["DynamicsRecorder", "LMHeadInputs", "curvature", "initial_removal", "prune_step", "token_statistics"]
