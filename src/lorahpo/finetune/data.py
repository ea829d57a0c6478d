"""Training data of the blackbox: load, normalise, mix, split and tokenize.

Every trial of a study calls :func:`build_splits` with the same :class:`DataConfig`, and gets the
same examples in the same train/validation split, so validation losses are comparable.

Rows are normalised to one of two shapes: an instruction row
``{"instruction", "input", "output"}`` (Alpaca; Dolly and prompt/completion rows are mapped onto
it, the prompt becoming the instruction), or a chat row ``{"messages": [{"role", "content"}, ...]}``
whose last message is the assistant's answer. Instruction rows are rendered with the chosen
template; chat rows always go through the tokenizer's chat template, and the loss covers only
their final assistant turn.

Mixture rule: with usable row counts ``n_i`` and weights ``w_i`` (sum ``W``), the mixture has
``min_i(n_i * W / w_i)`` rows, the largest size that honours the weights without repeating a
row; source ``i`` gives ``round(size * w_i / W)`` rows sampled without replacement (seeded).
``max_examples`` lowers the size. The ``alpaca-dolly`` preset instead keeps every row of its two
datasets (the hub's, or the two ``sources`` given in their place, whose weights are then unused), as
the paper did: ~67k rows, about 78/22, which it reports as a 70/30 mix, and ~53.6k of them train.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lorahpo.finetune.config import DataConfig, DataSource

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

# Fields of each format: (required, optional) -> normalised instruction-row names.
_FIELDS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "alpaca": ({"instruction": "instruction", "output": "output"}, {"input": "input"}),
    "dolly": ({"instruction": "instruction", "response": "output"}, {"context": "input"}),
    "prompt_completion": ({"prompt": "instruction", "completion": "output"}, {}),
    "chat": ({"messages": "messages"}, {}),
}
_FILE_TYPES = (".json", ".jsonl", ".csv", ".parquet")
_ALPACA_DOLLY = ("tatsu-lab/alpaca", "databricks/databricks-dolly-15k")


class DataError(ValueError):
    """The training data cannot be used; the message is one line naming the source and the problem."""


@dataclass
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    labels: list[int]
    """Same length as ``input_ids``; ``-100`` on prompt tokens so the loss covers the response only."""


@dataclass
class SourceReport:
    """What happened to the rows of one source."""

    name: str
    format: str = "auto"
    read: int = 0
    malformed: int = 0
    first_problem: str | None = None
    used: int = 0
    truncated: int = 0
    """Examples cut at ``max_length`` (their response loses its end)."""
    dropped: int = 0
    """Examples whose prompt alone fills ``max_length``, so no response token is left to learn."""


@dataclass
class DataReport:
    """Counts per source, and the split sizes once :func:`build_splits` has run."""

    sources: list[SourceReport] = field(default_factory=list)
    train: int = 0
    validation: int = 0

    def summary(self) -> str:
        """One paragraph for people: rows per source, malformed rows, truncation, split."""
        parts = []
        for s in self.sources:
            text = f"{s.name} ({s.format}): {s.read} read, {s.used} used"
            if s.malformed:
                text += f", {s.malformed} malformed (first: {s.first_problem})"
            if s.truncated or s.dropped:
                text += f", {s.truncated} truncated, {s.dropped} dropped as too long"
            parts.append(text)
        split = f" Split: {self.train} train, {self.validation} validation." if self.train else ""
        return "Data: " + "; ".join(parts) + "." + split

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON files and study attributes."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        sources = [SourceReport(**s) for s in data.get("sources", [])]
        return cls(sources, int(data.get("train", 0)), int(data.get("validation", 0)))


@dataclass
class DataSplits:
    """The tokenized training and validation examples, with the report of how they were made."""

    train: list[Example]
    validation: list[Example]
    report: DataReport


def load_rows(cfg: DataConfig) -> tuple[list[dict[str, Any]], DataReport]:
    """Load the configured data as normalised rows, mixture applied (deterministic in ``cfg.seed``)."""
    tagged, report = _load_mixture(cfg)
    return [row for _, row in tagged], report


def build_splits(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase) -> DataSplits:
    """Load, split and tokenize the data of a trial.

    The split is a seeded shuffle of the mixture, so every trial with the same config sees the
    same validation examples. Each example is ``prompt + response + EOS``, cut at
    ``cfg.max_length``, with the prompt tokens masked out of the labels.
    """
    tagged, report = _load_mixture(cfg)
    if len(tagged) < 2:
        raise DataError(f"data: {len(tagged)} usable row(s); need at least 2 to split into train and validation")
    order = list(range(len(tagged)))
    random.Random(cfg.seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * cfg.validation_fraction)))
    examples = _tokenize([tagged[i] for i in order], cfg, tokenizer, report)
    validation = [e for e in examples[:n_val] if e is not None]
    train = [e for e in examples[n_val:] if e is not None]
    if not train or not validation:
        raise DataError(f"data: every example's prompt fills max_length={cfg.max_length}; raise data.max_length")
    report.train, report.validation = len(train), len(validation)
    return DataSplits(train, validation, report)


def render(row: dict[str, Any], template: str, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """Return ``(prompt_text, response_text)`` of a normalised row.

    An Alpaca response is the bare output; a chat-template response ends the way the template
    ends a turn, often with the EOS token. :func:`build_splits` appends EOS where it is missing.
    """
    if "messages" in row:
        return _render_chat(row["messages"], tokenizer)
    if template == "chat":
        user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        return _render_chat(messages, tokenizer)
    prompt = ALPACA_PROMPT if row["input"] else ALPACA_PROMPT_NO_INPUT
    return prompt.format(instruction=row["instruction"], input=row["input"]), row["output"]


def _render_chat(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("data: chat rendering needs a tokenizer with a chat template; use template: alpaca")
    # With tokenize=False the template renders text (its annotation covers every mode).
    prompt = cast(str, tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
    full = cast(str, tokenizer.apply_chat_template(messages, tokenize=False))
    if not full.startswith(prompt):
        raise DataError("data: the tokenizer's chat template renders the conversation differently from its prompt")
    return prompt, full[len(prompt) :].rstrip()  # the trailing newline after the end-of-turn is not learned


def _tokenize(
    tagged: list[tuple[int, dict[str, Any]]], cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, report: DataReport
) -> list[Example | None]:
    """Tokenize rows in batches; a row with no response token left after truncation gives None."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("data: the tokenizer has no EOS token; set tokenizer.eos_token")
    pairs = [render(row, cfg.template, tokenizer) for _, row in tagged]
    # Chat templates write their own BOS; only the Alpaca text needs the tokenizer's special tokens.
    chat = [("messages" in row) or cfg.template == "chat" for _, row in tagged]
    prompts = _encode([p for p, _ in pairs], chat, tokenizer)
    responses = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    examples: list[Example | None] = []
    for (source, _), prompt, response in zip(tagged, prompts, responses, strict=True):
        if not response or response[-1] != eos:
            response = [*response, eos]
        stats = report.sources[source]
        if len(prompt) >= cfg.max_length:
            stats.dropped += 1
            examples.append(None)
            continue
        if len(prompt) + len(response) > cfg.max_length:
            stats.truncated += 1
            response = response[: cfg.max_length - len(prompt)]
        examples.append(Example(prompt + response, [IGNORE_INDEX] * len(prompt) + response))
    return examples


def _encode(texts: list[str], chat: list[bool], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    ids: list[list[int]] = [[] for _ in texts]
    for flag in (False, True):
        index = [i for i, c in enumerate(chat) if c == flag]
        if index:
            encoded = tokenizer([texts[i] for i in index], add_special_tokens=not flag)["input_ids"]
            for i, tokens in zip(index, encoded, strict=True):
                ids[i] = tokens
    return ids


def _load_mixture(cfg: DataConfig) -> tuple[list[tuple[int, dict[str, Any]]], DataReport]:
    """Rows tagged with their source index, mixture applied, and the report."""
    sources, weighted = _resolve_sources(cfg)
    report = DataReport()
    per_source = []
    for source in sources:
        stats = SourceReport(name=_source_name(source.path))
        report.sources.append(stats)
        per_source.append(_normalise(source, _read(source), stats))
    weights = [s.weight for s in sources] if weighted else [float(len(rows)) for rows in per_source]
    total_weight = sum(weights)
    size = min(len(rows) * total_weight / w for rows, w in zip(per_source, weights, strict=True))
    size = min(size, cfg.max_examples or size)
    rng = random.Random(cfg.seed)
    tagged = []
    for i, (rows, w) in enumerate(zip(per_source, weights, strict=True)):
        take = min(len(rows), round(size * w / total_weight))
        chosen = sorted(rng.sample(range(len(rows)), take))  # sorted: keep the file order within a source
        report.sources[i].used = take
        tagged += [(i, rows[j]) for j in chosen]
    return tagged, report


def _resolve_sources(cfg: DataConfig) -> tuple[list[DataSource], bool]:
    """The sources to read, and whether their weights apply (False: keep every row)."""
    if cfg.preset is None:
        return cfg.sources, True
    if cfg.preset == "bigbench-instruct":
        if cfg.sources:
            raise DataError("data: preset bigbench-instruct takes no sources; set preset: null to train on your own")
        from lorahpo.finetune.builtin_data import bigbench_instruct

        return [DataSource(path=str(bigbench_instruct(cfg.size, cfg.cache_dir)), format="alpaca")], True
    if not cfg.sources:
        return [DataSource(path=name) for name in _ALPACA_DOLLY], False
    if len(cfg.sources) != 2:
        raise DataError(f"data: preset alpaca-dolly takes two sources (Alpaca, Dolly), got {len(cfg.sources)}")
    return cfg.sources, False


def _source_name(path: str) -> str:
    return Path(path).name if Path(path).suffix.lower() in _FILE_TYPES else path


def _read(source: DataSource) -> list[Any]:
    """Raw rows of a source; an unreadable JSONL line becomes a string that names the problem."""
    path = Path(source.path).expanduser()
    if path.is_dir():
        return _read_datasets(source, path)
    if not path.exists():
        if path.suffix.lower() in _FILE_TYPES or source.path.startswith((".", "/", "~")):
            raise DataError(f"{source.path}: file not found")
        return _read_datasets(source, None)  # not a local path: a hub dataset name
    name = _source_name(source.path)
    try:
        return _read_file(path, name)
    except DataError:
        raise
    except (OSError, ValueError, csv.Error) as err:  # undecodable text, broken CSV, corrupt Parquet
        raise DataError(
            f"{name}: cannot read it: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None


def _read_file(path: Path, name: str) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [
            _json_line(line, n)
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()
        ]
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{name}: invalid JSON ({err})") from None
        rows = data.get("data") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise DataError(f"{name}: expected a JSON list of rows or an object with a 'data' list")
        return rows
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{name}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        return pq.read_table(path).to_pylist()
    raise DataError(
        f"{name}: unsupported file type {suffix or '(none)'}; use {', '.join(_FILE_TYPES)} or a dataset folder"
    )


def _json_line(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return f"line {number} is not valid JSON"


def _read_datasets(source: DataSource, folder: Path | None) -> list[Any]:
    """Rows of a ``save_to_disk`` folder or a hub dataset, read with the ``datasets`` package."""
    where = "a save_to_disk folder" if folder else "it as a hub dataset (no such local file or folder)"
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source.path}: reading {where} needs the datasets package (pip install datasets)") from None
    try:
        if folder is None:
            loaded = datasets.load_dataset(source.path, split=source.split)
        else:
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise DataError(f"{source.path}: no split {source.split!r}; it has {sorted(loaded)}")
                loaded = loaded[source.split]
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (network, format, missing repo)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{source.path}: cannot load {where}: {reason}") from None
    return list(loaded)


def _normalise(source: DataSource, raw: list[Any], stats: SourceReport) -> list[dict[str, Any]]:
    """Validate and normalise rows, counting the malformed ones; fail if none is usable."""
    stats.read = len(raw)
    if not raw:
        raise DataError(f"{stats.name}: no rows")
    fmt = source.format if source.format != "auto" else _detect(raw, stats.name)
    stats.format = fmt
    required, optional = _FIELDS[fmt]
    dicts = [row for row in raw if isinstance(row, dict)]
    for key in required:
        if dicts and not any(key in row for row in dicts):
            raise DataError(f"{stats.name}: field {key!r} of format {fmt} is missing from every row")
    rows = []
    for number, row in enumerate(raw, 1):
        problem = _problem(row, number, required, optional, fmt)
        if problem is None:
            rows.append(_normal_row(row, required, optional))
        else:
            stats.malformed += 1
            stats.first_problem = stats.first_problem or problem
    if not rows:
        raise DataError(f"{stats.name}: no usable rows out of {len(raw)} (first problem: {stats.first_problem})")
    return rows


def _detect(raw: list[Any], name: str) -> str:
    keys = {key for row in raw[:100] if isinstance(row, dict) for key in row}
    for fmt in ("chat", "alpaca", "dolly", "prompt_completion"):
        if set(_FIELDS[fmt][0]) <= keys:
            return fmt
    formats = ", ".join(_FIELDS)
    raise DataError(f"{name}: cannot detect the row format from fields {sorted(keys)}; set format ({formats})")


def _problem(row: Any, number: int, required: dict[str, str], optional: dict[str, str], fmt: str) -> str | None:
    """Why a raw row is unusable, or None."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return f"row {number} is not an object"
    if fmt == "chat":
        return _chat_problem(row.get("messages"), number)
    for key in required:
        value = row.get(key)
        if value is None:
            return f"row {number}: field {key!r} is missing"
        if not isinstance(value, str):
            return f"row {number}: field {key!r} is not text"
        if not value.strip():
            return f"row {number}: field {key!r} is empty"
    for key in optional:
        if row.get(key) is not None and not isinstance(row[key], str):
            return f"row {number}: field {key!r} is not text"
    return None


def _chat_problem(messages: Any, number: int) -> str | None:
    if not isinstance(messages, list) or len(messages) < 2:
        return f"row {number}: 'messages' must be a list of at least two messages"
    for message in messages:
        if not (isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))):
            return f"row {number}: each message needs text 'role' and 'content'"
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return f"row {number}: the last message must be a non-empty assistant answer"
    return None


def _normal_row(row: dict[str, Any], required: dict[str, str], optional: dict[str, str]) -> dict[str, Any]:
    if "messages" in required:
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}
    normal = {"instruction": "", "input": "", "output": ""}
    for key, name in (required | optional).items():
        normal[name] = (row.get(key) or "").strip()
    return normal
