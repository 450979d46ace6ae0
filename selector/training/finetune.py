"""The fine-tuning loop: a vision-language model on vlselect or TRL-layout rows, with Accelerate.

Loss is on assistant tokens only; optional LoRA (``use_peft``); gradient accumulation; mixed precision from the
launcher or ``bf16``/``fp16``; periodic evaluation and checkpoints with exact resume (model, optimizer, scheduler,
RNG, data position, active set); best-checkpoint selection and early stopping on the validation loss; Accelerate
trackers (``report_to``); a model card and ``push_to_hub``; ``dynamics.parquet`` of per-example training dynamics
(:mod:`selector.training.callbacks`); optional dynamic pruning of unforgettable examples.

From Python::

    from selector.training import train
    result = train("tiny_cpu", model_name_or_path="path/to/model", dataset_name="data/", output_dir="out/run1")
    result["output_dir"], result["eval_loss"]

From the shell (``accelerate launch`` for several processes; ``recipes/accelerate_configs/`` holds launcher
configs)::

    accelerate launch -m selector.training.finetune proxy_smolvlm_256m --dataset_name data/ --output_dir out/
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/finetune.py \
        recipes/configs/smolvlm_2b_lora.yaml --dataset_name data/ --output_dir out/ --report_to tensorboard
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

from selector.errors import ConfigError, DataError
from selector.fileio import atomic_write_text, dumps_json, read_json, write_json
from selector.training import callbacks
from selector.training.config import find_config, parse_args, resolve_config, write_config
from selector.training.data import ChatCollator, RowDataset, column_list, load_rows, make_loader
from selector.training.modeling import VisualTokenPruning, load_model_and_processor, torch_dtype

logger = logging.getLogger(__name__)

VISION_MARKERS = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


def _from_mixed_precision(value) -> dict[str, bool]:
    """use --bf16 / --fp16 (or accelerate launch --mixed_precision, which wins over both)."""
    value = str(value).lower()
    if value == "bf16":
        return {"bf16": True}
    if value == "fp16":
        return {"fp16": True}
    if value in ("no", "auto"):
        return {}
    raise ConfigError(f"mixed_precision {value!r}: expected no, bf16 or fp16 (deprecated: use --bf16 or --fp16)")


@dataclass
class FinetuneConfig:
    """Options of the fine-tuning loop (YAML keys = these fields = CLI flags; TRL's / transformers' names).

    Model and data: ``model_name_or_path``, ``model_revision``, ``torch_dtype``, ``attn_implementation``;
    ``dataset_name`` (a file or folder :func:`selector.data.load_instructions` reads, a ``save_to_disk`` folder, or
    a Hub dataset id; canonical or TRL messages layout), ``dataset_train_split``, ``eval_dataset`` or
    ``eval_fraction``.

    Precision: ``bf16`` / ``fp16`` request mixed precision when the script is started without a launcher setting;
    a mixed precision set by ``accelerate launch`` (``--mixed_precision``, a config file, or
    ``ACCELERATE_MIXED_PRECISION``) wins over both, with a warning when they disagree.

    Evaluation, checkpoints and the Hub, as in ``transformers.TrainingArguments``: ``eval_strategy`` (``no``,
    ``steps``, ``epoch``) every ``eval_steps`` (default ``logging_steps``); ``save_strategy`` every ``save_steps``,
    keeping ``save_total_limit`` checkpoints (never the best); ``load_best_model_at_end`` with
    ``metric_for_best_model`` (``eval_loss``) and ``greater_is_better``; ``early_stopping_patience`` evaluations
    without an improvement larger than ``early_stopping_threshold`` stop the run; ``report_to`` names Accelerate
    trackers (``tensorboard``, ``wandb``, ... or ``none``) that get the logged losses; ``push_to_hub`` uploads
    ``output_dir`` (model or adapter, processor, model card, results; no checkpoints) to ``hub_model_id``
    (default: the output folder's name), private unless ``hub_private_repo`` is false.

    Training dynamics and "Peeling the Onion" (Kong et al., AAAI 2023):

    - ``accuracy_threshold`` (0.5): share of an example's answer tokens that must be argmax-correct for it to
      count as learned in forgetting events (dynamic pruning's ranking; the ``forgetting`` strategy has its own).
    - ``prune_fraction`` (0 = off): example level; this share of the rows is removed at random before training.
    - ``prune_swap_fraction`` (0.1): at each epoch boundary, this share of the active set (its most unforgettable
      examples) is swapped for examples drawn at random from the removed ones.
    - ``visual_token_ratio`` (1 = off): token level, LLaVA-style models only; each image keeps this share of its
      patch tokens, those the vision tower's [CLS] attends to most (:class:`~selector.training.modeling.
      VisualTokenPruning`).

    Example:
        >>> FinetuneConfig(model_name_or_path="m", dataset_name="d", output_dir="o", use_peft=True).lora_r
        16
    """

    #: old option name -> new name (or a converter of the old value); accepted with a warning
    DEPRECATED_ALIASES: ClassVar[dict[str, Any]] = {
        "dataset": "dataset_name",
        "dataset_split": "dataset_train_split",
        "revision": "model_revision",
        "use_lora": "use_peft",
        "mixed_precision": _from_mixed_precision,
    }

    model_name_or_path: str = ""
    dataset_name: str = ""
    output_dir: str = ""
    model_revision: str | None = None
    trust_remote_code: bool = False
    torch_dtype: str = "float32"
    attn_implementation: str | None = None
    dataset_format: str = "auto"
    image_root: str | None = None
    # images that resolve outside image_root are row errors (image_outside_root) unless this opts in (issue 21)
    allow_outside_root: bool = False
    dataset_train_split: str = "train"
    train_ids: list[str] | None = None
    train_ids_file: str | None = None
    eval_dataset: str | None = None
    eval_fraction: float = 0.0
    max_train_samples: int | None = None
    num_train_epochs: int = 1
    max_steps: int = -1
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_length: int | None = 2048
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    freeze_vision_tower: bool = True
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    lora_modules_to_save: list[str] | None = None
    merge_lora: bool = False
    eval_strategy: str = "no"
    eval_steps: int | None = None
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: int | None = None
    load_best_model_at_end: bool = False
    metric_for_best_model: str = "eval_loss"
    greater_is_better: bool | None = None
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    resume_from_checkpoint: str | None = None
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=lambda: ["none"])
    logging_dir: str | None = None
    run_name: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = True
    seed: int = 0
    dataloader_num_workers: int = 0
    ddp_find_unused_parameters: bool = True
    dynamics: bool = True
    dynamics_grad_norm: bool = False
    dynamics_curvature: bool = False
    curvature_h: float = 1e-3
    curvature_probes: int = 1
    accuracy_threshold: float = 0.5
    prune_fraction: float = 0.0
    prune_swap_fraction: float = 0.1
    visual_token_ratio: float = 1.0
    save_model: bool = True


STRATEGIES = ("no", "steps", "epoch")


def _metric_key(name: str) -> str:
    """``"loss"`` and ``"eval_loss"`` both name the evaluation loss (transformers prefixes ``eval_``)."""
    return name if name.startswith("eval_") else f"eval_{name}"


def _greater_is_better(cfg: FinetuneConfig) -> bool:
    if cfg.greater_is_better is not None:
        return cfg.greater_is_better
    return not _metric_key(cfg.metric_for_best_model).endswith("loss")


def validate(cfg: FinetuneConfig) -> None:
    """Raise :class:`ConfigError` for impossible option values."""
    for name in ("model_name_or_path", "dataset_name", "output_dir"):
        if not getattr(cfg, name):
            raise ConfigError(f"option {name!r} is required")
    positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
    for name in positive + ("num_train_epochs", "curvature_probes"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"option {name!r} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise ConfigError(f"max_steps must be -1 (use num_train_epochs) or >= 1, got {cfg.max_steps}")
    if not 0.0 <= cfg.eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
    if not 0.0 <= cfg.prune_fraction < 1.0:
        raise ConfigError(f"prune_fraction must be in [0, 1), got {cfg.prune_fraction}")
    if not 0.0 <= cfg.prune_swap_fraction <= 1.0:
        raise ConfigError(f"prune_swap_fraction must be in [0, 1], got {cfg.prune_swap_fraction}")
    if cfg.prune_fraction > 0 and cfg.prune_swap_fraction > 0 and not cfg.dynamics:
        raise ConfigError("prune_fraction needs dynamics: true (pruning ranks examples by their forgetting events)")
    if not 0.0 < cfg.accuracy_threshold <= 1.0:
        raise ConfigError(f"accuracy_threshold must be in (0, 1], got {cfg.accuracy_threshold}")
    if not 0.0 < cfg.visual_token_ratio <= 1.0:
        raise ConfigError(f"visual_token_ratio must be in (0, 1], got {cfg.visual_token_ratio}")
    if cfg.bf16 and cfg.fp16:
        raise ConfigError("bf16 and fp16 are both set; choose one")
    if cfg.lr_scheduler_type not in SCHEDULERS:
        raise ConfigError(f"lr_scheduler_type {cfg.lr_scheduler_type!r}: expected one of {', '.join(SCHEDULERS)}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.max_length is not None and cfg.max_length < 8:
        raise ConfigError(f"max_length must be >= 8, got {cfg.max_length}")
    for name in ("eval_strategy", "save_strategy"):
        if getattr(cfg, name) not in STRATEGIES:
            raise ConfigError(f"{name} {getattr(cfg, name)!r}: expected one of {', '.join(STRATEGIES)}")
    if cfg.save_strategy == "steps" and cfg.save_steps < 1:
        raise ConfigError(
            f"save_steps must be >= 1 with save_strategy 'steps' (use save_strategy: no), got {cfg.save_steps}"
        )
    if cfg.eval_strategy == "steps" and (cfg.eval_steps or cfg.logging_steps) < 1:
        raise ConfigError("eval_strategy 'steps' needs eval_steps >= 1 (or logging_steps >= 1)")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        raise ConfigError(f"save_total_limit must be >= 1 or null, got {cfg.save_total_limit}")
    if _metric_key(cfg.metric_for_best_model) != "eval_loss":
        raise ConfigError(
            f"metric_for_best_model {cfg.metric_for_best_model!r}: the training loop evaluates eval_loss only "
            "(accuracy scores come from selector.training.evaluate after training)"
        )
    evaluates = cfg.eval_strategy != "no" and (cfg.eval_dataset or cfg.eval_fraction > 0)
    if cfg.eval_strategy != "no" and not evaluates:
        raise ConfigError(f"eval_strategy {cfg.eval_strategy!r} needs an eval set (eval_dataset or eval_fraction > 0)")
    if cfg.load_best_model_at_end:
        if not evaluates:
            raise ConfigError("load_best_model_at_end needs eval_strategy steps/epoch and an eval set")
        # as in transformers: the best model can only be one that was saved when it was evaluated
        if cfg.save_strategy != cfg.eval_strategy:
            raise ConfigError(
                f"load_best_model_at_end needs save_strategy == eval_strategy, got {cfg.save_strategy!r} and "
                f"{cfg.eval_strategy!r}"
            )
        if cfg.eval_strategy == "steps" and cfg.save_steps % (cfg.eval_steps or cfg.logging_steps):
            raise ConfigError(
                f"load_best_model_at_end needs save_steps ({cfg.save_steps}) to be a multiple of eval_steps "
                f"({cfg.eval_steps or cfg.logging_steps})"
            )
    if cfg.early_stopping_patience is not None:
        if cfg.early_stopping_patience < 1:
            raise ConfigError(f"early_stopping_patience must be >= 1 or null, got {cfg.early_stopping_patience}")
        if not evaluates:
            raise ConfigError("early_stopping_patience needs eval_strategy steps/epoch and an eval set")
    _trackers(cfg.report_to)
    if cfg.push_to_hub and not cfg.save_model:
        raise ConfigError("push_to_hub needs save_model: true (there is nothing to push)")
    torch_dtype(cfg.torch_dtype)


def _trackers(report_to: list[str]) -> list[str]:
    """``report_to`` -> Accelerate tracker names (``[]`` for ``none``); an unknown name is a ConfigError."""
    from accelerate.utils import LoggerType

    known = {t.value for t in LoggerType}
    names = [n.strip().lower() for n in report_to if n.strip()]
    if not names or names == ["none"]:
        return []
    unknown = [n for n in names if n not in known]
    if unknown or "none" in names:
        raise ConfigError(
            f"report_to {', '.join(unknown or ['none'])}: expected none, or Accelerate trackers ({', '.join(sorted(known))})"
        )
    import importlib.util

    from selector.errors import MissingDependencyError

    for name in names:
        # Accelerate drops a tracker whose package is missing with a log line; a requested one must not vanish
        modules = ("tensorboard", "tensorboardX") if name == "tensorboard" else (name,)
        if name != "all" and not any(importlib.util.find_spec(m) for m in modules):
            hint = 'pip install "vlselect[training]"' if name == "tensorboard" else f"pip install {name}"
            raise MissingDependencyError(f"report_to {name}: the {name} package is not installed ({hint})")
    return names


def _mixed_precision(cfg: FinetuneConfig) -> str | None:
    """The ``mixed_precision`` to give Accelerator, or None to let the launcher's setting stand.

    Precedence: a mixed precision set by ``accelerate launch`` (its flag or config file; it exports
    ``ACCELERATE_MIXED_PRECISION``) or by that environment variable wins; ``bf16``/``fp16`` apply otherwise. The
    launcher's ``no`` is also its default, so it does not override an explicit ``--bf16``/``--fp16``.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    wanted = "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else None
    if launcher and launcher != "no":
        if wanted and wanted != launcher and int(os.environ.get("RANK", "0")) == 0:
            logger.warning("the launcher's mixed_precision=%s wins over --%s", launcher, wanted)
        return None
    return wanted


def _id_hash(row_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def _datasets(cfg: FinetuneConfig):
    train, skipped = load_rows(
        cfg.dataset_name,
        format=cfg.dataset_format,
        image_root=cfg.image_root,
        allow_outside_root=cfg.allow_outside_root,
        split=cfg.dataset_train_split,
    )
    wanted = list(cfg.train_ids or [])
    if cfg.train_ids_file:
        try:
            with open(cfg.train_ids_file, encoding="utf-8") as handle:
                wanted += [line.strip() for line in handle if line.strip()]
        except FileNotFoundError:
            raise ConfigError(f"train_ids_file {cfg.train_ids_file}: no such file") from None
    ids = column_list(train, "id")
    if wanted:
        position = {row_id: i for i, row_id in enumerate(ids)}
        unknown = [row_id for row_id in wanted if row_id not in position]
        if unknown:
            raise DataError(
                f"{len(unknown)} train id(s) are not usable rows of {cfg.dataset_name} (missing or with an error), "
                f"e.g. {', '.join(unknown[:5])}"
            )
        train = train.select(sorted({position[row_id] for row_id in wanted}))
        ids = column_list(train, "id")
    eval_set = None
    if cfg.eval_dataset:
        eval_set, eval_skipped = load_rows(
            cfg.eval_dataset,
            format=cfg.dataset_format,
            image_root=cfg.image_root,
            allow_outside_root=cfg.allow_outside_root,
            split=cfg.dataset_train_split,
        )
        skipped = {k: skipped.get(k, 0) + eval_skipped.get(k, 0) for k in set(skipped) | set(eval_skipped)}
    elif cfg.eval_fraction > 0:
        # Hash-ordered split: the same rows are held out whatever the input order.
        order = sorted(range(len(ids)), key=lambda i: _id_hash(ids[i], cfg.seed))
        n_eval = max(1, int(round(cfg.eval_fraction * len(ids))))
        if n_eval >= len(ids):
            raise DataError(f"eval_fraction={cfg.eval_fraction} leaves no training rows of {len(ids)}")
        held = set(order[:n_eval])
        eval_set = train.select(sorted(held))
        train = train.select([i for i in range(len(ids)) if i not in held])
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        ids = column_list(train, "id")
        order = sorted(range(len(ids)), key=lambda i: _id_hash(ids[i], cfg.seed))
        train = train.select(sorted(order[: cfg.max_train_samples]))
    return train, eval_set, skipped


def _prepare_model(cfg: FinetuneConfig, model):
    import torch

    if cfg.freeze_vision_tower:
        for name, param in model.named_parameters():
            if any(marker in name for marker in VISION_MARKERS):
                param.requires_grad_(False)
    if cfg.use_peft:
        from selector.errors import require

        require("peft", "training", "LoRA fine-tuning")
        from peft import LoraConfig, get_peft_model

        wanted = set(cfg.lora_target_modules)
        targets = [
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and name.rsplit(".", 1)[-1] in wanted
            and not (cfg.freeze_vision_tower and any(marker in name for marker in VISION_MARKERS))
        ]
        if not targets:
            raise ConfigError(
                f"lora_target_modules {sorted(wanted)} match no linear layer of {cfg.model_name_or_path}"
            )
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            # e.g. ["multi_modal_projector"]: trained fully and saved with the adapter.
            modules_to_save=cfg.lora_modules_to_save,
        )
        model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.use_peft:
            model.enable_input_require_grads()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.2f%%)", n_train, n_total, 100.0 * n_train / max(n_total, 1))
    if n_train == 0:
        raise ConfigError("no trainable parameters (check freeze_vision_tower / use_peft / lora_target_modules)")
    return model


def _epoch_order(active: list[int], seed: int, epoch: int, multiple: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng([seed, epoch])
    order = [active[i] for i in rng.permutation(len(active))]
    # Every process must take the same number of steps; pad by wrapping (the recorder keeps one record per id).
    pad = (-len(order)) % multiple
    return order + order[:pad]


def _batches_per_epoch(n_active: int, cfg: FinetuneConfig, world: int) -> int:
    per_step = cfg.per_device_train_batch_size * world
    return math.ceil(n_active / per_step)


def _find_checkpoint(output_dir: str, spec: str | None) -> str | None:
    if not spec:
        return None
    if spec != "latest":
        if not os.path.exists(os.path.join(spec, "trainer_state.json")):
            raise ConfigError(f"resume_from_checkpoint {spec}: not a checkpoint folder (no trainer_state.json)")
        return spec
    found = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.exists(os.path.join(output_dir, name, "trainer_state.json")):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    if not found:
        logger.info("resume_from_checkpoint=latest: no checkpoint in %s, starting from scratch", output_dir)
        return None
    return max(found)[1]


def _to_device(batch: dict[str, Any], device, dtype=None) -> dict[str, Any]:
    import torch

    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def _model_dtype(model):
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return None


def _image_token_id(model) -> int | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    value = getattr(getattr(base, "config", None), "image_token_id", None)
    if value is None:
        value = getattr(getattr(base, "config", None), "image_token_index", None)
    return None if value is None else int(value)


def evaluate_loss(model, processor, dataset, cfg, accelerator) -> float:
    """Token-weighted mean answer loss over ``dataset`` (all processes; each takes a shard)."""
    import torch

    unwrapped = accelerator.unwrap_model(model)
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    loader = make_loader(
        RowDataset(dataset, indices),
        batch_size=cfg.per_device_eval_batch_size,
        collate_fn=ChatCollator(processor, cfg.max_length),
        num_workers=cfg.dataloader_num_workers,
    )
    total = torch.zeros(2, device=accelerator.device)
    was_training = unwrapped.training
    unwrapped.eval()
    dtype = _model_dtype(unwrapped)
    with torch.inference_mode(), accelerator.autocast():
        for batch in loader:
            batch = _to_device(batch, accelerator.device, dtype)
            labels = batch.pop("labels")
            batch.pop("index", None)
            out = unwrapped(**batch)
            stats = callbacks.token_statistics(out.logits, labels)
            n = stats["per_example"]["n_tokens"].sum()
            total += torch.stack([stats["loss"].float() * n, n.float()])
    unwrapped.train(was_training)
    total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _measure_curvature(model, processor, dataset, active, cfg, accelerator, recorder, epoch) -> None:

    unwrapped = accelerator.unwrap_model(model)
    indices = active[accelerator.process_index :: accelerator.num_processes]
    loader = make_loader(
        RowDataset(dataset, indices),
        batch_size=cfg.per_device_eval_batch_size,
        collate_fn=ChatCollator(processor, cfg.max_length),
    )
    dtype = _model_dtype(unwrapped)
    for k, batch in enumerate(loader):
        batch = _to_device(batch, accelerator.device, dtype)
        # no autocast here: curvature() runs in fp32 whatever the training precision (bf16 makes it noise).
        values = callbacks.curvature(
            unwrapped, batch, h=cfg.curvature_h, n_probes=cfg.curvature_probes, seed=cfg.seed + 7919 * epoch + k
        )
        recorder.add_curvature(epoch, batch["index"].cpu().numpy(), values.float().numpy())
    if accelerator.num_processes > 1:
        # Curvature runs on uneven shards; share the records through the filesystem-free object gather.
        from accelerate.utils import gather_object

        mine = [(i, e, r.get("curvature")) for (i, e), r in recorder.records.items() if e == epoch]
        for i, e, value in gather_object(mine):
            if value is not None:
                recorder.add_curvature(e, [i], [value])


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    return sorted(
        (int(m.group(1)), name) for name in os.listdir(output_dir) if (m := re.fullmatch(r"checkpoint-(\d+)", name))
    )


def _save_checkpoint(accelerator, cfg, state: dict, recorder) -> str:
    path = os.path.join(cfg.output_dir, f"checkpoint-{state['global_step']}")
    accelerator.save_state(path)
    if accelerator.is_main_process:
        if recorder is not None:
            recorder.save(os.path.join(path, "dynamics.parquet"))
        write_json(os.path.join(path, "trainer_state.json"), state)
        if cfg.save_total_limit:
            best = state.get("best_model_checkpoint")
            best = os.path.basename(best) if best else None
            # the best checkpoint is never rotated out (as in transformers), so it still loads at the end
            old = [name for _, name in _checkpoints(cfg.output_dir) if name != best]
            n_keep = cfg.save_total_limit - (1 if best and best != os.path.basename(path) else 0)
            for name in old[: max(len(old) - max(n_keep, 1), 0)]:
                shutil.rmtree(os.path.join(cfg.output_dir, name), ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _track_eval(cfg: FinetuneConfig, state: dict[str, Any], eval_loss: float) -> bool:
    """Record an evaluation in ``state``; True when early stopping says stop.

    Improvement as in transformers' ``EarlyStoppingCallback``: better than the best so far (``greater_is_better``)
    by more than ``early_stopping_threshold``. A NaN loss never improves.
    """
    state["eval_history"].append({"step": state["global_step"], "epoch": state["epoch"], "eval_loss": eval_loss})
    best = state.get("best_metric")
    greater = _greater_is_better(cfg)
    if not math.isfinite(eval_loss):
        improved = False
    elif best is None:
        improved = True
    else:
        better = eval_loss > best if greater else eval_loss < best
        improved = better and abs(eval_loss - best) > cfg.early_stopping_threshold
    if improved:
        state["best_metric"] = eval_loss
        state["best_step"] = state["global_step"]
        state["early_stopping_counter"] = 0
    else:
        state["early_stopping_counter"] = state.get("early_stopping_counter", 0) + 1
    return cfg.early_stopping_patience is not None and state["early_stopping_counter"] >= cfg.early_stopping_patience


def _tracker_config(cfg: FinetuneConfig) -> dict[str, Any]:
    # TensorBoard's hparams take scalars only
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _hub_repo_id(cfg: FinetuneConfig) -> str:
    return cfg.hub_model_id or os.path.basename(os.path.normpath(cfg.output_dir))


def write_model_card(cfg: FinetuneConfig, result: dict[str, Any], path: str) -> str:
    """Write ``README.md`` (a ``huggingface_hub`` model card) for the trained model or adapter in ``path``.

    The metadata names the base model, the library (``peft`` for an adapter, ``transformers`` for a full or
    merged fine-tune), the pipeline tag and the dataset when it is a Hub id (never a local path); the body has the
    hyperparameters and the results. Returns the card's path.
    """
    from huggingface_hub import ModelCard, ModelCardData

    adapter = cfg.use_peft and not cfg.merge_lora
    is_hub_id = bool(re.fullmatch(r"[\w.-]+/[\w.-]+", cfg.dataset_name)) and not os.path.exists(cfg.dataset_name)
    base_is_hub_id = bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", cfg.model_name_or_path)) and not os.path.exists(
        cfg.model_name_or_path
    )
    data = ModelCardData(
        base_model=cfg.model_name_or_path if base_is_hub_id else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="image-text-to-text",
        tags=["vlselect", "sft", "vision-language"] + (["lora"] if cfg.use_peft else []),
        datasets=[cfg.dataset_name] if is_hub_id else None,
    )
    name = _hub_repo_id(cfg)
    kind = "LoRA adapter" if adapter else ("merged LoRA fine-tune" if cfg.use_peft else "full fine-tune")
    hyper = {
        "learning_rate": cfg.learning_rate,
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "num_train_epochs": cfg.num_train_epochs,
        "max_steps": cfg.max_steps,
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "seed": cfg.seed,
    }
    if cfg.use_peft:
        hyper.update(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_target_modules=cfg.lora_target_modules)

    def fmt(value):
        return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"

    # local paths never go into a card that may be published
    base = cfg.model_name_or_path if base_is_hub_id else "a local base model"
    base_ref = cfg.model_name_or_path if base_is_hub_id else "BASE_MODEL"
    dataset = (
        f"[{cfg.dataset_name}](https://huggingface.co/datasets/{cfg.dataset_name})" if is_hub_id else "a local dataset"
    )
    if adapter:
        usage = (
            "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            f'base = AutoModelForImageTextToText.from_pretrained("{base_ref}")\n'
            f'model = PeftModel.from_pretrained(base, "{name}")\nprocessor = AutoProcessor.from_pretrained("{name}")\n```'
        )
    else:
        usage = (
            "```python\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            f'model = AutoModelForImageTextToText.from_pretrained("{name}")\n'
            f'processor = AutoProcessor.from_pretrained("{name}")\n```'
        )
    body = "\n".join(
        [
            f"# {name}",
            "",
            f"A {kind} of {base} on {dataset} ({result.get('n_train')} training rows), trained with vlselect's "
            "`selector.training` engine (loss on assistant tokens only).",
            "",
            "## Use",
            "",
            usage,
            "",
            "## Training",
            "",
            "| hyperparameter | value |",
            "|---|---|",
            *(f"| {k} | {', '.join(v) if isinstance(v, list) else v} |" for k, v in hyper.items()),
            "",
            "## Results",
            "",
            "| metric | value |",
            "|---|---|",
            f"| optimizer steps | {result.get('global_step')} |",
            f"| train loss (mean) | {fmt(result.get('train_loss'))} |",
            f"| eval loss | {fmt(result.get('eval_loss'))} |",
            f"| best eval loss | {fmt(result.get('best_metric'))} |",
            "",
        ]
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    out = os.path.join(path, "README.md")
    atomic_write_text(out, str(card))
    return out


def push_to_hub(cfg: FinetuneConfig, folder: str) -> str:
    """Upload ``folder`` (model or adapter, processor, model card, results; no checkpoints) to ``hub_model_id``.

    Private unless ``hub_private_repo`` is false. Returns the URL of the commit.

    Raises:
        ConfigError: the upload failed (offline, not logged in, no write access), in one line.
    """
    from huggingface_hub import HfApi

    repo_id = _hub_repo_id(cfg)
    try:
        api = HfApi()
        repo = api.create_repo(repo_id, private=cfg.hub_private_repo, exist_ok=True, repo_type="model")
        repo_id = getattr(repo, "repo_id", repo_id)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message="vlselect fine-tune",
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", "*.tmp-*"],
        )
    except Exception as exc:  # network, auth and HTTP errors come from several libraries; all end the same way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"push_to_hub {repo_id}: {type(exc).__name__}: {first}") from None
    return str(getattr(commit, "commit_url", commit))


def train(config: FinetuneConfig | dict | str | None = None, **overrides) -> dict[str, Any]:
    """Fine-tune a model as ``config`` says and return what happened.

    Args:
        config: a :class:`FinetuneConfig`, a dict of its fields, a YAML path or a shipped config's name
            (:func:`selector.training.config.find_config`); ``overrides`` win over it.

    Returns:
        ``{"output_dir", "model_dir" (None when save_model is false), "global_step", "epochs_completed",
        "resumed_from_step", "train_loss" (mean over the run's optimizer steps), "loss_history" (per optimizer
        step), "visual_tokens_history" (image tokens the language model saw per optimizer step), "eval_loss" (of
        the final model; NaN without an eval set), "eval_history" (``[{"step", "epoch", "eval_loss"}]`` of the
        periodic evaluations), "best_metric", "best_model_checkpoint", "stopped_early", "mixed_precision" (what
        Accelerate used), "num_processes", "n_train", "n_eval",
        "skipped_rows" ({error kind: count}), "dynamics_path" (None when dynamics is off), "active_ids" (the final
        active set), "hub_url", "train_runtime_s"}``. ``train_results.json`` holds the same (strict JSON: NaN is
        null) without ``active_ids``.

    Raises:
        ConfigError, DataError: bad options or unusable data, with a one-line reason.
    """
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_scheduler

    from selector.logs import progress as progress_bar

    if isinstance(config, (str, os.PathLike)):
        config = find_config(config)
    cfg = resolve_config(FinetuneConfig, config, **overrides)
    validate(cfg)
    started = time.perf_counter()

    # A text-only batch leaves the vision tower and projector without gradients; DDP must tolerate that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)
    trackers = _trackers(cfg.report_to)
    accelerator_kwargs: dict[str, Any] = {"kwargs_handlers": [ddp]}
    mixed_precision = _mixed_precision(cfg)
    if mixed_precision is not None:
        accelerator_kwargs["mixed_precision"] = mixed_precision
    if trackers:
        accelerator_kwargs.update(
            log_with=trackers, project_dir=cfg.logging_dir or os.path.join(cfg.output_dir, "runs")
        )
    accelerator = Accelerator(**accelerator_kwargs)
    deepspeed = accelerator.state.deepspeed_plugin is not None
    if deepspeed:
        # there is no prepared DataLoader to read these from; DeepSpeed accumulates gradients itself
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
        ds_config["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    set_seed(cfg.seed)
    os.makedirs(cfg.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        write_config(cfg, os.path.join(cfg.output_dir, "finetune_config.yaml"))
    if trackers:
        accelerator.init_trackers(
            cfg.run_name or os.path.basename(os.path.normpath(cfg.output_dir)), _tracker_config(cfg)
        )

    train, eval_set, skipped = _datasets(cfg)
    ids = column_list(train, "id")
    model, processor = load_model_and_processor(
        cfg.model_name_or_path,
        revision=cfg.model_revision,
        dtype=cfg.torch_dtype,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )
    model = _prepare_model(cfg, model)
    model.train()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
    )
    world = accelerator.num_processes
    # Peeling the Onion's example level: a random share is removed before training and the active set keeps
    # its size while examples are swapped in and out.
    active, pool = callbacks.initial_removal(len(ids), cfg.prune_fraction, cfg.seed)
    if not active:
        raise DataError(f"prune_fraction={cfg.prune_fraction} leaves no training rows of {len(ids)}")
    per_epoch_batches = [
        _batches_per_epoch(len(active), cfg, world) for e in range(cfg.num_train_epochs if cfg.max_steps <= 0 else 0)
    ]
    epoch_steps = [math.ceil(b / cfg.gradient_accumulation_steps) for b in per_epoch_batches]
    total_steps = cfg.max_steps if cfg.max_steps > 0 else sum(epoch_steps)
    scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=cfg.warmup_steps or int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    dtype = _model_dtype(unwrapped)

    recorder = callbacks.DynamicsRecorder(ids) if cfg.dynamics else None
    state: dict[str, Any] = {
        "global_step": 0,
        "epoch": 0,
        "batches_done": 0,
        "active": active,
        "pool": pool,
        "loss_history": [],
        "visual_tokens_history": [],
        "eval_history": [],
        "best_metric": None,
        "best_step": None,
        "best_model_checkpoint": None,
        "early_stopping_counter": 0,
        "stopped_early": False,
        "ids_fingerprint": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }
    checkpoint = _find_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint)
    resumed_from = None
    if checkpoint is not None:
        saved = read_json(os.path.join(checkpoint, "trainer_state.json"))
        # strict JSON stores a NaN step loss as null
        saved["loss_history"] = [float("nan") if v is None else v for v in saved.get("loss_history", [])]
        for record in saved.get("eval_history", []):
            record["eval_loss"] = float("nan") if record["eval_loss"] is None else record["eval_loss"]
        if saved.get("ids_fingerprint") != state["ids_fingerprint"]:
            raise ConfigError(f"checkpoint {checkpoint} was trained on different rows than {cfg.dataset_name}")
        accelerator.load_state(checkpoint)
        state.update(saved)
        resumed_from = state["global_step"]
        if recorder is not None and os.path.exists(os.path.join(checkpoint, "dynamics.parquet")):
            recorder.load(os.path.join(checkpoint, "dynamics.parquet"))
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, state["global_step"], state["epoch"])

    collator = ChatCollator(processor, cfg.max_length)
    # Follow transformers' global progress-bar switch, so a caller that silences library bars (vlselect labels
    # --quiet) silences this one too.
    from transformers.utils import logging as hf_logging

    progress = progress_bar(
        total=total_steps,
        initial=state["global_step"],
        desc="finetune",
        disable=not accelerator.is_local_main_process or not hf_logging.is_progress_bar_enabled(),
    )
    lm_inputs = callbacks.LMHeadInputs(unwrapped) if (cfg.dynamics and cfg.dynamics_grad_norm) else None
    pruner = VisualTokenPruning(unwrapped, cfg.visual_token_ratio) if cfg.visual_token_ratio < 1 else None
    image_token_id = _image_token_id(unwrapped)
    eval_every = cfg.eval_steps or cfg.logging_steps

    def evaluate_now() -> bool:
        """Periodic evaluation on every process; True when early stopping ends the run."""
        loss = evaluate_loss(model, processor, eval_set, cfg, accelerator)
        stop = _track_eval(cfg, state, loss)
        logger.info("step %d eval loss %.4f (best %s)", state["global_step"], loss, state["best_metric"])
        if trackers:
            accelerator.log({"eval/loss": loss}, step=state["global_step"])
        if stop:
            logger.info(
                "early stopping at step %d: no improvement in %d evaluations",
                state["global_step"],
                cfg.early_stopping_patience,
            )
            state["stopped_early"] = True
        return stop

    def save_now() -> None:
        path = os.path.join(cfg.output_dir, f"checkpoint-{state['global_step']}")
        if state.get("best_step") == state["global_step"]:
            state["best_model_checkpoint"] = path
        _save_checkpoint(accelerator, cfg, state, recorder)

    window: list[float] = []
    done = state["global_step"] >= total_steps or state.get("stopped_early", False)
    # max_steps, when set, overrides num_train_epochs (as in transformers.Trainer).
    n_epochs = cfg.num_train_epochs if cfg.max_steps <= 0 else math.inf
    while not done and state["epoch"] < n_epochs:
        epoch = state["epoch"]
        order = _epoch_order(state["active"], cfg.seed, epoch, cfg.per_device_train_batch_size * world)
        shard = order[accelerator.process_index :: world]
        start = state["batches_done"] * cfg.per_device_train_batch_size
        loader = make_loader(
            RowDataset(train, shard[start:]),
            batch_size=cfg.per_device_train_batch_size,
            collate_fn=collator,
            num_workers=cfg.dataloader_num_workers,
        )
        n_batches = math.ceil(len(shard) / cfg.per_device_train_batch_size)
        step_losses: list[float] = []
        step_visual = 0
        for batch in loader:
            k = state["batches_done"]
            group_start = (k // cfg.gradient_accumulation_steps) * cfg.gradient_accumulation_steps
            group_size = min(cfg.gradient_accumulation_steps, n_batches - group_start)
            sync = k + 1 == group_start + group_size
            batch = _to_device(batch, accelerator.device, dtype)
            labels = batch.pop("labels")
            index = batch.pop("index")
            if pruner is not None:
                batch, labels = pruner.shrink(batch, labels)
            if image_token_id is not None:
                step_visual += int((batch["input_ids"] == image_token_id).sum())
            # DeepSpeed's engine accumulates and scales by its own gradient_accumulation_steps
            context = accelerator.no_sync(model) if not sync and not deepspeed else nullcontext()
            with context, pruner.pruning() if pruner is not None else nullcontext():
                if lm_inputs is not None:
                    with lm_inputs:
                        out = model(**batch)
                        hidden = lm_inputs.value
                        stats = callbacks.token_statistics(out.logits, labels, hidden)
                else:
                    out = model(**batch)
                    stats = callbacks.token_statistics(out.logits, labels)
                accelerator.backward(stats["loss"] if deepspeed else stats["loss"] / group_size)
            step_losses.append(float(stats["loss"].detach()))
            if recorder is not None:
                per = stats["per_example"]
                gathered = (
                    accelerator.gather(
                        torch.stack(
                            [index.float()]
                            + [
                                per[n].float()
                                for n in ("loss", "correct", "accuracy", "el2n", "grad_norm", "n_tokens")
                            ],
                            1,
                        )
                    )
                    .cpu()
                    .numpy()
                )
                names = ("loss", "correct", "accuracy", "el2n", "grad_norm", "n_tokens")
                recorder.add(
                    epoch,
                    state["global_step"] + 1,
                    gathered[:, 0].astype(np.int64),
                    {n: gathered[:, j + 1] for j, n in enumerate(names)},
                )
            state["batches_done"] = k + 1
            if not sync:
                continue
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = float(
                accelerator.reduce(torch.tensor(np.mean(step_losses), device=accelerator.device), "mean")
            )
            step_losses = []
            state["global_step"] += 1
            state["loss_history"].append(step_loss)
            visual = accelerator.reduce(torch.tensor(step_visual, device=accelerator.device), "sum")
            state["visual_tokens_history"].append(int(visual))
            step_visual = 0
            window.append(step_loss)
            progress.update(1)
            if cfg.logging_steps and state["global_step"] % cfg.logging_steps == 0:
                lr = scheduler.get_last_lr()[0]
                logger.info(
                    "step %d epoch %d loss %.4f lr %.3g", state["global_step"], epoch, float(np.mean(window)), lr
                )
                if trackers:
                    accelerator.log(
                        {
                            "train/loss": float(np.mean(window)),
                            "train/learning_rate": float(lr),
                            "train/epoch": epoch + state["batches_done"] / max(n_batches, 1),
                        },
                        step=state["global_step"],
                    )
                window = []
            if state["global_step"] >= total_steps:
                done = True
            if cfg.eval_strategy == "steps" and state["global_step"] % eval_every == 0:
                done = evaluate_now() or done
            if cfg.save_strategy == "steps" and state["global_step"] % cfg.save_steps == 0:
                save_now()
            if done:
                break
        epoch_finished = state["batches_done"] >= n_batches
        if not epoch_finished:
            break
        if recorder is not None and cfg.dynamics_curvature:
            _measure_curvature(model, processor, train, state["active"], cfg, accelerator, recorder, epoch)
        if cfg.eval_strategy == "epoch":
            done = evaluate_now() or done
        if cfg.prune_fraction > 0 and cfg.prune_swap_fraction > 0 and not done and epoch + 1 < n_epochs:
            state["active"], state["pool"], dropped, restored = callbacks.prune_step(
                state["active"],
                state["pool"],
                recorder,
                int(round(cfg.prune_swap_fraction * len(state["active"]))),
                accuracy_threshold=cfg.accuracy_threshold,
                seed=[cfg.seed, epoch],
            )
            logger.info(
                "epoch %d: swapped out %d unforgettable example(s), restored %d; %d active, %d removed",
                epoch,
                len(dropped),
                len(restored),
                len(state["active"]),
                len(state["pool"]),
            )
        state["epoch"] = epoch + 1
        state["batches_done"] = 0
        if cfg.save_strategy == "epoch":
            save_now()
    progress.close()
    accelerator.wait_for_everyone()

    best_checkpoint = state.get("best_model_checkpoint")
    if cfg.load_best_model_at_end and best_checkpoint and os.path.isdir(best_checkpoint):
        if state["best_step"] != state["global_step"]:
            logger.info("loading the best checkpoint %s (eval loss %.4f)", best_checkpoint, state["best_metric"])
            accelerator.load_state(best_checkpoint)
    eval_loss = float("nan")
    if eval_set is not None:
        eval_loss = evaluate_loss(model, processor, eval_set, cfg, accelerator)
        logger.info("eval loss %.4f on %d rows", eval_loss, len(eval_set))
        if trackers:
            accelerator.log({"eval/loss": eval_loss}, step=state["global_step"])
    dynamics_path = None
    model_dir = None
    if accelerator.is_main_process:
        if recorder is not None:
            dynamics_path = os.path.join(cfg.output_dir, "dynamics.parquet")
            recorder.save(dynamics_path)
        if cfg.save_model:
            model_dir = cfg.output_dir
            to_save = accelerator.unwrap_model(model)
            if cfg.use_peft and cfg.merge_lora:
                to_save = to_save.merge_and_unload()
            to_save.save_pretrained(
                model_dir, state_dict=accelerator.get_state_dict(model) if not cfg.use_peft else None
            )
            processor.save_pretrained(model_dir)
    accelerator.wait_for_everyone()
    history = state["loss_history"]
    result = {
        "output_dir": cfg.output_dir,
        "model_dir": model_dir if cfg.save_model else None,
        "global_step": state["global_step"],
        "epochs_completed": state["epoch"],
        "resumed_from_step": resumed_from,
        "train_loss": float(np.mean(history)) if history else float("nan"),
        "loss_history": history,
        "visual_tokens_history": state.get("visual_tokens_history", []),
        "eval_loss": eval_loss,
        "eval_history": state["eval_history"],
        "best_metric": state["best_metric"],
        "best_model_checkpoint": best_checkpoint,
        "stopped_early": state["stopped_early"],
        "mixed_precision": str(accelerator.mixed_precision),
        "num_processes": world,
        "n_train": len(ids),
        "n_eval": 0 if eval_set is None else len(eval_set),
        "skipped_rows": skipped,
        "dynamics_path": dynamics_path if cfg.dynamics else None,
        "active_ids": [ids[i] for i in state["active"]],
        "hub_url": None,
        "train_runtime_s": time.perf_counter() - started,
    }
    if trackers:
        accelerator.end_training()
    if accelerator.is_main_process:
        if cfg.save_model:
            write_model_card(cfg, result, cfg.output_dir)
        write_json(
            os.path.join(cfg.output_dir, "train_results.json"), {k: v for k, v in result.items() if k != "active_ids"}
        )
        if cfg.push_to_hub:
            result["hub_url"] = push_to_hub(cfg, cfg.output_dir)
            write_json(
                os.path.join(cfg.output_dir, "train_results.json"),
                {k: v for k, v in result.items() if k != "active_ids"},
            )
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: ``[CONFIG] [--<field> value ...]`` (``CONFIG`` a YAML path or shipped name); exit 2 on bad
    input."""
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from selector.errors import VLSelectError

    try:
        cfg = parse_args(FinetuneConfig, argv)
        result = train(cfg)
    except VLSelectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if main_process:
        print(dumps_json({k: v for k, v in result.items() if k not in ("loss_history", "active_ids")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["FinetuneConfig", "evaluate_loss", "main", "push_to_hub", "train", "validate", "write_model_card"]
