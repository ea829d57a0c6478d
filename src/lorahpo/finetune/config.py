"""Typed configuration of one LoRA fine-tuning trial.

Every field has a default and a description, so a YAML file only names what differs.
Hyperparameters proposed by an optimizer are applied with :func:`apply_hyperparameters`,
the one place that maps a search-space name onto a config field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

PAPER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]

#: The metrics of a trial that ran; a pruned or failed one has those measured before it stopped.
METRIC_KEYS = (
    "validation_loss",
    "initial_validation_loss",
    "train_loss",
    "runtime_s",
    "train_tokens",
    "train_tokens_per_s",
    "peak_memory_mb",
    "trainable_params",
    "steps",
    "epochs",
    "micro_batch_size",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field(
        "smollm2-135m",
        description="Built-in name (smollm2-135m), a hub id, a local folder, or a .gguf file.",
    )
    gguf_file: str | None = Field(None, description="GGUF file inside `name` (a folder or hub repo).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you trust it.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none",
        description="Frozen base weights in 8 bits or 4 bits (NF4, double quantization, bf16 compute: QLoRA); "
        "needs bitsandbytes (the `quant` extra).",
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto",
        description="Attention kernel; auto is the library's choice (sdpa where supported). "
        "flash_attention_2 needs the flash-attn package and a CUDA GPU.",
    )


class DataSource(_Strict):
    path: str = Field(description="Local JSON/JSONL/CSV/Parquet file, a save_to_disk folder, or a hub dataset name.")
    format: Literal["auto", "alpaca", "dolly", "chat", "prompt_completion"] = Field(
        "auto", description="Row format; auto detects it from the fields of the first rows."
    )
    split: str = Field("train", description="Split to read from a hub dataset or a DatasetDict folder.")
    weight: float = Field(1.0, gt=0, description="Relative share of this source in the mixture.")


class DataConfig(_Strict):
    preset: Literal["bigbench-instruct", "alpaca-dolly"] | None = Field(
        "bigbench-instruct", description="Built-in data; set to null and give `sources` for your own."
    )
    size: Literal["cpu", "full"] = Field("cpu", description="Size of the built-in bigbench-instruct data.")
    sources: list[DataSource] = Field(default_factory=list, description="Your data sources (a mixture by weight).")
    template: Literal["alpaca", "chat"] = Field(
        "alpaca", description="Prompt rendering: the paper's Alpaca template, or the tokenizer's chat template."
    )
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Share held out for validation (paper: 0.2).")
    max_examples: int | None = Field(None, gt=0, description="Cap on the mixture size before the split.")
    max_length: int = Field(512, gt=8, description="Longest tokenized example; longer ones are truncated.")
    seed: int = Field(0, description="Seed of mixture sampling and of the train/validation split.")
    cache_dir: str | None = Field(None, description="Where built-in data is cached (default ~/.cache/lorahpo).")

    @model_validator(mode="after")
    def _needs_data(self) -> DataConfig:
        if self.preset is None and not self.sources:
            raise ValueError("give a `preset` or at least one entry in `sources`")
        return self


#: Named sets of modules that get adapters; the model's own layer names are found at load time.
TARGET_PRESETS = ("attention", "mlp", "all-linear")


class LoraConfig(_Strict):
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16, gt=0, description="LoRA scaling alpha (scale = alpha / rank, or alpha / sqrt(rank)).")
    dropout: float = Field(0.05, ge=0, le=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["attention", "mlp", "all-linear"] = Field(
        default_factory=lambda: list(PAPER_TARGET_MODULES),
        description="Modules that get adapters: a list of layer names (default: the paper's q/k/v/o), "
        "or a preset: attention (every linear layer of attention), mlp (of the feed-forward blocks), all-linear.",
    )
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(rank), stable across ranks.")
    use_dora: bool = Field(False, description="DoRA: learn a magnitude vector per output beside the LoRA direction.")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default",
        description="Adapter initialisation: default (A uniform, B zero), gaussian (A normal, B zero), pissa "
        "(the principal singular vectors of each base weight; the base keeps the residual), olora (its QR factors).",
    )
    loraplus_lr_ratio: float = Field(
        1.0, ge=1, description="LoRA+: the B matrices learn at this multiple of the learning rate (1: plain LoRA)."
    )


class TrainingConfig(_Strict):
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    train_fraction: float = Field(1.0, gt=0, le=1, description="Use this share of the training split (a fidelity).")
    batch_size: int = Field(8, ge=1, description="Examples per forward pass (per device).")
    effective_batch_size: int = Field(8, ge=1, description="Examples per optimizer step (via gradient accumulation).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps with linear warm-up (paper: 0.03).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (paper: 0).")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null disables it.")
    eval_every: int | None = Field(
        None, gt=0, description="Also measure validation loss every N optimizer steps (default: once per epoch)."
    )
    precision: Literal["auto", "bf16", "fp32", "fp16"] = Field(
        "auto", description="auto: bf16 where the device supports it (CUDA, CPUs with AMX/AVX512-BF16), else fp32."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    processes: int = Field(
        1,
        ge=1,
        description=(
            "Data-parallel processes of the trial (one per GPU, NCCL; gloo on a CPU); each takes its share of "
            "every optimizer step's micro-batches. A study sets it from `gpus_per_trial` (docs/gpu.md)."
        ),
    )
    seed: int = Field(0, description="Seed of LoRA init, dropout and data order; the same in every trial of a study.")
    divergence_factor: float = Field(
        3.0, gt=1, description="A validation loss above this multiple of the untrained loss is a divergence (failed)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about a third more compute."
    )
    packing: bool = Field(
        False,
        description="Train each micro-batch as one sequence: its examples end to end, no padding, position ids "
        "restarting at each example and no attention across examples (variable-length attention with "
        "flash_attention_2). The same loss as padded batches.",
    )
    auto_batch: bool = Field(
        False,
        description="On out of memory, retry the trial at half the batch_size (same effective batch) "
        "down to 1 before it fails; the result records the batch size used.",
    )

    @model_validator(mode="after")
    def _accumulation(self) -> TrainingConfig:
        if self.effective_batch_size % self.batch_size:
            raise ValueError(
                f"effective_batch_size ({self.effective_batch_size}) "
                f"must be a multiple of batch_size ({self.batch_size})"
            )
        return self


#: Evaluators named by a plain string in ``evaluate:``; any other string is an lm-eval task.
BUILTIN_EVALUATORS = {"retention": "choice", "in_domain": "generate"}


class EvaluatorSpec(_Strict):
    """A downstream metric measured inside each trial, on the adapted model still in memory (docs/evaluation.md)."""

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="Metric name: the trial reports `<name>`, `<name>_se`, `<name>_base` and `<name>_drop`.",
    )
    kind: Literal["choice", "generate", "lm_eval"] = Field(
        description="choice: log-likelihood multiple choice; generate: greedy exact match; lm_eval: an lm-eval task."
    )
    path: str | None = Field(
        None,
        description="JSONL of `{question, choices, answer}` (choice) or `{prompt, answer}` (generate); "
        "default: the built-in retention questions (choice) or held-out validation examples (generate).",
    )
    task: str | None = Field(None, description="lm-eval task name (lm_eval; e.g. mmlu, bbh-bigbench).")
    include_path: str | None = Field(None, description="Folder of extra lm-eval task YAML files (lm_eval).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (lm_eval; default: the task's own).")
    size: int = Field(100, ge=1, description="Questions or examples asked (a sample of a longer set; lm-eval's limit).")
    seed: int = Field(0, description="Seed of the sample of questions.")
    max_new_tokens: int = Field(32, ge=1, description="Longest generated answer (generate).")
    batch_size: int = Field(8, ge=1, description="Rows per forward pass.")
    shots: int = Field(
        0,
        ge=0,
        le=8,
        description="Solved examples of the same task before each question, options lettered and the "
        "answer a greedy `(X)`, as few-shot benchmarks ask (choice; 0: zero-shot log-likelihood).",
    )

    @model_serializer(mode="wrap")
    def _without_default_shots(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Results cached under a hash of a config written before `shots` existed stay found.
        data: dict[str, Any] = handler(self)
        if self.shots == 0:
            data.pop("shots", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):  # `retention`, `in_domain`, or an lm-eval task by name
            kind = BUILTIN_EVALUATORS.get(value)
            if kind is not None:
                return {"name": value, "kind": kind}
            return {"name": "".join(c if c.isalnum() else "_" for c in value), "kind": "lm_eval", "task": value}
        if isinstance(value, dict) and "kind" not in value and value.get("name") in BUILTIN_EVALUATORS:
            return {**value, "kind": BUILTIN_EVALUATORS[value["name"]]}  # {name: retention, shots: 3}
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> EvaluatorSpec:
        if (self.kind == "lm_eval") != (self.task is not None):
            raise ValueError("`task` is what an lm_eval evaluator runs, and only it")
        if self.kind == "lm_eval" and self.path is not None:
            raise ValueError("an lm_eval evaluator takes `task` (and `include_path`), not `path`")
        if self.kind != "lm_eval" and (self.include_path is not None or self.num_fewshot is not None):
            raise ValueError("`include_path` and `num_fewshot` belong to lm_eval evaluators")
        if self.shots and self.kind != "choice":
            raise ValueError("`shots` belongs to choice evaluators (lm_eval ones take `num_fewshot`)")
        return self

    def metric_names(self) -> list[str]:
        """The metrics this evaluator adds to a trial."""
        names = [self.name, f"{self.name}_se", f"{self.name}_base", f"{self.name}_drop"]
        if self.kind == "choice":
            names += [f"{self.name}_logprob", f"{self.name}_logprob_drop"]
        return names


class LoraTrialConfig(_Strict):
    """Everything one fine-tuning trial needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluate: list[EvaluatorSpec] = Field(
        default_factory=list,
        description="Downstream metrics measured after training, e.g. `[retention]` (docs/evaluation.md).",
    )
    save_adapter: bool = Field(True, description="Write the trained adapter into the trial folder.")

    @model_validator(mode="after")
    def _pissa_needs_full_weights(self) -> LoraTrialConfig:
        if self.lora.init == "pissa" and self.model.quantization != "none":
            raise ValueError("lora.init pissa rewrites the base weights and needs model.quantization: none")
        return self

    @model_validator(mode="after")
    def _unique_metrics(self) -> LoraTrialConfig:
        names = list(self.metric_names())
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"evaluate: two evaluators report {repeated[0]!r}; give them different names")
        return self

    def metric_names(self) -> list[str]:
        """Every metric a complete trial of this config reports."""
        evaluated = [n for spec in self.evaluate for n in spec.metric_names()]
        return [*METRIC_KEYS, *evaluated, *(["evaluation_s"] if self.evaluate else [])]


#: Training fields that change where or how fast a trial computes, not what it learns.
_NOT_TUNABLE = ("device", "processes", "precision", "gradient_checkpointing", "packing", "auto_batch")

#: Search-space names that map onto a trial-config field, by section.
TUNABLE: dict[str, str] = {
    **{name: "lora" for name in LoraConfig.model_fields},
    **{name: "training" for name in TrainingConfig.model_fields if name not in _NOT_TUNABLE},
}


def apply_hyperparameters(config: LoraTrialConfig, params: dict[str, Any]) -> LoraTrialConfig:
    """Return a copy of ``config`` with the proposed hyperparameters set (validated)."""
    data = config.model_dump()
    for name, value in params.items():
        section = TUNABLE.get(name)
        if section is None:
            raise KeyError(f"{name!r} is not a tunable hyperparameter; choose from {sorted(TUNABLE)}")
        if name == "target_modules" and isinstance(value, str) and value not in TARGET_PRESETS:
            value = [m.strip() for m in value.split(",")]
        data[section][name] = value
    return LoraTrialConfig.model_validate(data)
