"""LoRA variants, memory savers and out-of-memory retries of the blackbox, on the tiny model."""

import math
import sys

import optuna
import pytest
import torch
from ci import unavailable

from lorahpo import config as study_config
from lorahpo.finetune import train
from lorahpo.finetune.config import LoraConfig, LoraTrialConfig, TrainingConfig, apply_hyperparameters
from lorahpo.finetune.train import add_lora, optimizer_groups, run_trial, smaller_batch_size

from .tiny import build_model


def base_model(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny.model_dir, dtype=torch.float32)


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapted(tiny, **lora):
    return add_lora(base_model(tiny), LoraConfig(**{"rank": 4, "alpha": 8, "dropout": 0.0, **lora}), seed=0)


def short(tiny, lora=None, **training):
    """A 6-step trial config on the tiny model with these LoRA and training settings."""
    config = tiny.config(max_steps=6, **training)
    return config.model_copy(update={"lora": config.lora.model_copy(update=lora or {})})


# --- what PEFT builds ---------------------------------------------------------------------------


def test_dora_adds_a_magnitude_vector_per_output_of_each_adapted_layer(tiny):
    layers = lora_layers(adapted(tiny, use_dora=True))
    assert len(layers) == 8  # q, k, v, o in 2 layers
    for layer in layers.values():
        magnitude = layer.lora_magnitude_vector["default"].weight
        assert magnitude.shape == (layer.out_features,) and magnitude.requires_grad
        # it starts as the norm of each output row of the base weight, so the layer is unchanged
        expected = layer.get_base_layer().weight.norm(dim=1)
        torch.testing.assert_close(magnitude.detach(), expected)
    assert not any(
        hasattr(m, "lora_magnitude_vector") and m.lora_magnitude_vector for m in lora_layers(adapted(tiny)).values()
    )


def test_rslora_scales_by_alpha_over_the_square_root_of_the_rank(tiny):
    plain = next(iter(lora_layers(adapted(tiny)).values()))
    rs = next(iter(lora_layers(adapted(tiny, use_rslora=True)).values()))
    assert plain.scaling["default"] == pytest.approx(8 / 4)
    assert rs.scaling["default"] == pytest.approx(8 / math.sqrt(4))


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_start_from_the_base_weights_and_keep_the_function(tiny, init):
    original = {n: p.detach().clone() for n, p in base_model(tiny).named_parameters()}
    model = adapted(tiny, init=init)
    ids = torch.randint(2, 300, (2, 10))
    for name, layer in lora_layers(model).items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert b.abs().sum() > 0  # not the zero start of plain LoRA
        residual = layer.get_base_layer().weight
        key = name.removeprefix("base_model.model.") + ".weight"
        assert not torch.allclose(residual, original[key])  # the base keeps only the residual
        torch.testing.assert_close(residual + layer.scaling["default"] * b @ a, original[key], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        base = base_model(tiny)(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, base, atol=1e-4, rtol=1e-4)


def test_pissa_a_comes_from_the_top_singular_vectors(tiny):
    original = base_model(tiny).model.layers[0].self_attn.q_proj.weight.detach()
    layer = adapted(tiny, init="pissa").base_model.model.model.layers[0].self_attn.q_proj
    _, s, vh = torch.linalg.svd(original, full_matrices=False)
    a = layer.lora_A["default"].weight.detach()
    scale = layer.scaling["default"]
    torch.testing.assert_close(a, (s[:4].sqrt()[:, None] * vh[:4]) / math.sqrt(scale), atol=1e-5, rtol=1e-4)


def test_gaussian_init_draws_a_from_a_normal_and_keeps_b_zero(tiny):
    layers = lora_layers(adapted(tiny, init="gaussian", rank=8))
    a = torch.cat([m.lora_A["default"].weight.flatten() for m in layers.values()])
    assert all(m.lora_B["default"].weight.abs().sum() == 0 for m in layers.values())
    assert a.std().item() == pytest.approx(1 / 8, rel=0.15)  # PEFT's normal(0, 1/r)


@pytest.mark.parametrize(
    ("preset", "leaves"),
    [
        ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("mlp", {"gate_proj", "up_proj", "down_proj"}),
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_target_module_presets_adapt_the_layers_of_their_blocks(tiny, preset, leaves):
    layers = lora_layers(adapted(tiny, target_modules=preset))
    assert {name.rsplit(".", 1)[-1] for name in layers} == leaves
    assert len(layers) == 2 * len(leaves)  # in both decoder layers; never the head


def test_a_preset_with_no_matching_layers_fails_with_one_line(tiny):
    from lorahpo.finetune.models import ModelError

    model = base_model(tiny)
    model.model.layers = torch.nn.ModuleList()
    with pytest.raises(ModelError, match="target_modules mlp: the model has no linear layer"):
        train.target_modules(model, "mlp")


def test_loraplus_gives_the_b_matrices_the_larger_learning_rate(tiny):
    model = adapted(tiny)
    groups = optimizer_groups(model, 1e-3, 16.0)
    names = {id(p): n for n, p in model.named_parameters()}
    plain, fast = groups
    assert plain["lr"] == 1e-3 and fast["lr"] == pytest.approx(1.6e-2)
    assert all(".lora_A." in names[id(p)] for p in plain["params"]) and len(plain["params"]) == 8
    assert all(".lora_B." in names[id(p)] for p in fast["params"]) and len(fast["params"]) == 8
    one = optimizer_groups(model, 1e-3, 1.0)
    assert len(one) == 1 and len(one[0]["params"]) == 16


def test_loraplus_ratio_reaches_the_optimizer_of_a_trial(tiny, monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    result = run_trial(short(tiny, {"loraplus_lr_ratio": 4.0}))
    assert result.status == "complete"
    assert all(fast == pytest.approx(4 * plain) for plain, fast in seen) and seen[-1][0] > 0


@pytest.mark.parametrize(
    "lora",
    [
        {"use_dora": True},
        {"use_rslora": True},
        {"init": "pissa"},
        {"init": "olora"},
        {"loraplus_lr_ratio": 8.0},
        {"target_modules": "mlp"},
    ],
    ids=["dora", "rslora", "pissa", "olora", "loraplus", "mlp"],
)
def test_each_variant_trains(tiny, lora):
    result = run_trial(short(tiny, lora))
    assert result.status == "complete", result.reason
    m = result.metrics
    assert m["validation_loss"] < m["initial_validation_loss"] - 0.02


def test_pissa_on_a_quantized_base_is_refused():
    with pytest.raises(ValueError, match="pissa rewrites the base weights"):
        LoraTrialConfig.model_validate({"model": {"quantization": "4bit"}, "lora": {"init": "pissa"}})


# --- searchable -----------------------------------------------------------------------------------


VARIANT_SPACE = {
    "use_rslora": {"type": "choice", "values": [False, True], "x0": False},
    "use_dora": {"type": "choice", "values": [False, True], "x0": False},
    "init": {"type": "choice", "values": ["default", "gaussian", "pissa", "olora"], "x0": "default"},
    "loraplus_lr_ratio": {"type": "choice", "values": [1, 4, 16], "x0": 1},
    "target_modules": {"type": "choice", "values": ["attention", "mlp", "all-linear"], "x0": "attention"},
}


@pytest.mark.parametrize("optimizer", ["nomad", "tpe", "random", "nsga2", "grid"])
def test_every_optimizer_searches_the_variants(optimizer):
    conf = study_config.parse(
        {
            "name": "variants",
            "optimizer": optimizer,
            "budget": 12,
            "space": {"params": VARIANT_SPACE},
            "objective": {"lora": {}},
        },
        "test",
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=conf.make_sampler())
    seen = set()
    for _ in range(12):
        trial = study.ask(conf.space.distributions())
        config = apply_hyperparameters(conf.objective.lora, trial.params)
        lora = config.lora
        seen.add((lora.use_rslora, lora.use_dora, lora.init, lora.loraplus_lr_ratio, str(lora.target_modules)))
        # a made-up objective that rewards the variants, so the search moves
        study.tell(trial, 3.0 - lora.use_dora - lora.use_rslora - math.log(lora.loraplus_lr_ratio))
    assert len(seen) > 3


def test_memory_and_speed_settings_are_not_hyperparameters():
    config = LoraTrialConfig()
    for name in ("gradient_checkpointing", "auto_batch"):
        with pytest.raises(KeyError, match="not a tunable hyperparameter"):
            apply_hyperparameters(config, {name: True})


# --- gradient checkpointing and attention kernels ---------------------------------------------------


def test_gradient_checkpointing_recomputes_and_gives_the_same_loss(tiny, monkeypatch):
    import transformers.modeling_utils as mu

    plain = run_trial(short(tiny))
    calls = []
    checkpoint = mu.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counting)
    recomputed = run_trial(short(tiny, gradient_checkpointing=True))
    assert recomputed.status == "complete" and calls  # the decoder layers went through checkpoint
    assert recomputed.metrics["validation_loss"] == pytest.approx(plain.metrics["validation_loss"], rel=1e-5)
    assert recomputed.metrics["train_loss"] == pytest.approx(plain.metrics["train_loss"], rel=1e-5)


def test_eager_and_sdpa_attention_give_the_same_loss(tiny):
    losses = []
    for kernel in ("eager", "sdpa"):
        config = short(tiny)
        config.model.attn_implementation = kernel
        result = run_trial(config)
        assert result.status == "complete", result.reason
        losses.append(result.metrics["validation_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_flash_attention_on_a_cpu_fails_with_one_line(tiny):
    config = short(tiny, device="cpu")
    config.model.attn_implementation = "flash_attention_2"
    result = run_trial(config)
    assert result.status == "failed"
    assert result.reason == "model.attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package"


# --- out of memory: smaller micro-batches ----------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "effective", "smaller"), [(8, 8, 4), (8, 24, 4), (6, 12, 3), (5, 15, 1), (3, 12, 1), (1, 8, None)]
)
def test_a_retry_halves_the_batch_to_a_divisor_of_the_effective_batch(batch, effective, smaller):
    cfg = TrainingConfig(batch_size=batch, effective_batch_size=effective)
    assert smaller_batch_size(cfg) == smaller


def fits_only(monkeypatch, rows):
    """Training steps with more than ``rows`` examples per micro-batch run out of memory."""
    loss = train.response_loss_sum

    def limited(model, batch, prefix=None):
        if model.training and batch.input_ids.shape[0] > rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory at {batch.input_ids.shape[0]} rows")
        return loss(model, batch, prefix)

    monkeypatch.setattr(train, "response_loss_sum", limited)


def test_auto_batch_retries_at_half_the_micro_batch_with_the_same_effective_batch(tiny, monkeypatch, capsys):
    direct = run_trial(short(tiny, batch_size=2, effective_batch_size=8))
    fits_only(monkeypatch, 2)
    result = run_trial(short(tiny, batch_size=8, effective_batch_size=8, auto_batch=True))
    assert result.status == "complete", result.reason
    assert result.metrics["micro_batch_size"] == 2 and direct.metrics["micro_batch_size"] == 2
    assert result.metrics["validation_loss"] == pytest.approx(direct.metrics["validation_loss"], rel=1e-6)
    out = capsys.readouterr().out
    assert "out of memory at batch_size 8: retrying at 4" in out and "retrying at 2" in out


def test_without_auto_batch_out_of_memory_fails(tiny, monkeypatch):
    fits_only(monkeypatch, 2)
    result = run_trial(short(tiny, batch_size=8, effective_batch_size=8))
    assert result.status == "failed" and result.reason.startswith("out of memory: ")


def test_auto_batch_fails_once_a_single_example_does_not_fit(tiny, monkeypatch, capsys):
    fits_only(monkeypatch, 0)
    result = run_trial(short(tiny, batch_size=4, effective_batch_size=8, auto_batch=True))
    assert result.status == "failed" and result.reason.startswith("out of memory: ")
    assert "retrying at 1" in capsys.readouterr().out


# --- quantized base weights -----------------------------------------------------------------------


def test_quantization_without_bitsandbytes_fails_with_the_extra_to_install(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    config = short(tiny)
    config.model.quantization = "4bit"
    result = run_trial(config)
    assert result.status == "failed"
    assert result.reason == "model.quantization 4bit needs bitsandbytes: pip install 'lorahpo[quant]'"


@pytest.fixture(scope="module")
def tiny64(tiny, tmp_path_factory):
    """The tiny data with a wider model: bitsandbytes packs 4-bit CPU weights in blocks of 64 inputs."""
    from transformers import AutoTokenizer

    folder = build_model(
        tmp_path_factory.mktemp("tiny64"), AutoTokenizer.from_pretrained(tiny.model_dir), hidden_size=64
    )
    return type(tiny)(folder, tiny.data_path)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_a_quantized_base_loads_quantized_and_trains(tiny64, bits, monkeypatch):
    try:
        import bitsandbytes as bnb
    except ImportError:
        unavailable("bitsandbytes is not installed (pip install 'lorahpo[quant]')")
    kind = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    built = []
    add = train.add_lora

    def recording(model, cfg, seed):
        built.append(model)
        return add(model, cfg, seed)

    monkeypatch.setattr(train, "add_lora", recording)
    config = short(tiny64, device="cpu")
    config.model.quantization = bits
    result = run_trial(config)
    assert result.status == "complete", result.reason
    quantized = [m for m in built[0].modules() if isinstance(m, kind)]
    assert len(quantized) == 14  # every linear layer of the 2 decoder layers; not the head
    assert result.metrics["validation_loss"] < result.metrics["initial_validation_loss"] - 0.05


# --- packing ----------------------------------------------------------------------------------------


def packing_examples():
    from lorahpo.finetune.data import IGNORE_INDEX, Example

    g = torch.Generator().manual_seed(0)
    rows = []
    for n, prompt in [(17, 9), (5, 2), (30, 11), (12, 0)]:  # the last one is all response, from its first token
        ids = torch.randint(2, 300, (n,), generator=g).tolist()
        rows.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return rows


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize("head", ["response_only", "full"])
def test_a_packed_batch_has_the_loss_of_the_padded_batch(tiny, monkeypatch, kernel, head):
    from transformers import AutoModelForCausalLM

    from lorahpo.finetune.batching import collate, pack

    if head == "full":  # the path of architectures whose head is not a plain linear layer
        monkeypatch.setattr(train, "_PLAIN_HEAD", frozenset())
    model = AutoModelForCausalLM.from_pretrained(tiny.model_dir, dtype=torch.float32, attn_implementation=kernel)
    rows = packing_examples()
    indices = list(range(len(rows)))
    padded = collate(rows, indices, 0, torch.device("cpu"))
    packed = pack(rows, indices, torch.device("cpu"))
    assert packed.input_ids.shape == (1, 64) and packed.tokens == padded.tokens == 64
    assert packed.targets == padded.targets
    assert packed.position_ids[0].tolist() == [*range(17), *range(5), *range(30), *range(12)]
    with torch.no_grad():
        expected = train.response_loss_sum(model, padded).item()
        assert train.response_loss_sum(model, packed).item() == pytest.approx(expected, rel=2e-6)
        # without the position ids the examples attend to each other: a loss further off than that
        # (not by much: the random model's attention barely changes its predictions)
        leaky = packed.__class__(**{**packed.__dict__, "position_ids": None})
        assert abs(train.response_loss_sum(model, leaky).item() - expected) > 2e-5 * expected


def test_a_packed_trial_learns_what_a_padded_one_learns(tiny):
    padded = run_trial(short(tiny, precision="fp32"))
    packed = run_trial(short(tiny, precision="fp32", packing=True))
    assert packed.status == "complete", packed.reason
    assert packed.metrics["train_tokens"] == padded.metrics["train_tokens"]
    assert packed.metrics["train_loss"] == pytest.approx(padded.metrics["train_loss"], rel=1e-4)
    assert packed.metrics["validation_loss"] == pytest.approx(padded.metrics["validation_loss"], rel=1e-4)


# --- on a CUDA GPU ----------------------------------------------------------------------------------


def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.gpu
def test_qlora_on_a_gpu_trains_with_checkpointing_and_packing(tiny64):
    needs_cuda()
    pytest.importorskip("bitsandbytes")
    config = short(tiny64, device="cuda", precision="bf16", gradient_checkpointing=True, packing=True)
    config.model.quantization = "4bit"
    result = run_trial(config)
    assert result.status == "complete", result.reason
    assert result.metrics["validation_loss"] < result.metrics["initial_validation_loss"] - 0.02


@pytest.mark.gpu
def test_packed_rows_under_flash_attention_have_the_loss_of_padded_batches(tiny64):
    from transformers import AutoModelForCausalLM

    from lorahpo.finetune.batching import collate, pack

    needs_cuda()
    pytest.importorskip("flash_attn")
    cuda = torch.device("cuda")
    rows = packing_examples()
    indices = list(range(len(rows)))
    losses = []
    for kernel, batch in (("sdpa", collate(rows, indices, 0, cuda)), ("flash_attention_2", pack(rows, indices, cuda))):
        model = AutoModelForCausalLM.from_pretrained(tiny64.model_dir, dtype=torch.bfloat16, attn_implementation=kernel)
        with torch.no_grad():
            losses.append(train.response_loss_sum(model.to(cuda), batch).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)  # bf16 kernels
