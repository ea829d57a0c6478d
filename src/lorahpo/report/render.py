"""Write reports: PNG figures, a self-contained HTML page (figures embedded) and a Markdown summary.

Everything a page shows comes from :mod:`lorahpo.report.data`; every text from a study (trial
reasons, the config, task names) is escaped.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from lorahpo.files import write_atomic
from lorahpo.progress import fmt_evaluator
from lorahpo.report import plots
from lorahpo.report.data import CompareReport, StudyReport
from lorahpo.report.stats import RESAMPLES
from lorahpo.result import TrialRecord

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
  color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.lead{color:#444}
.note{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#f3f3f3}
td.text,th.text{text-align:left}
td:first-child,#top-trials td{white-space:nowrap}
tr.baseline td{background:#f7f9fc}
tr.best td{background:#fff4f0;font-weight:600}
.wide{overflow-x:auto}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em;max-height:30em}
details summary{cursor:pointer;color:#1f5fa8}
"""

Figures = dict[str, bytes | None]


def study_figures(report: StudyReport) -> Figures:
    """The PNG figures of a study report, by file stem."""
    return {
        "best_so_far": plots.best_so_far(report),
        "parallel_coordinates": plots.parallel_coordinates(report),
        "loss_vs_hyperparameters": plots.loss_vs_params(report),
        "downstream_vs_loss": plots.downstream_vs_loss(report),
        "evaluators_vs_loss": plots.evaluators_vs_loss(report),
        "pareto_front": plots.pareto_front(report),
    }


def write_report(report: StudyReport, out: Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and the PNG figures into ``out``; return the paths."""
    figures = study_figures(report)
    paths = _write_pngs(figures, out)
    paths["html"] = write_atomic(out / "report.html", study_html(report, figures))
    paths["markdown"] = write_atomic(out / "report.md", study_markdown(report, {k: p.name for k, p in paths.items()}))
    return paths


def write_compare(compare: CompareReport, out: Path) -> dict[str, Path]:
    """Write ``compare.html``, ``compare.md`` and the figure of a comparison into ``out``."""
    figures = {"compare_best_so_far": plots.compare_curves(compare)}
    paths = _write_pngs(figures, out)
    paths["html"] = write_atomic(out / "compare.html", compare_html(compare, figures))
    names = {k: p.name for k, p in paths.items()}
    paths["markdown"] = write_atomic(out / "compare.md", compare_markdown(compare, names))
    return paths


# --------------------------------------------------------------------------- formatting


def fmt_loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def fmt_score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def fmt_rho(value: float | None, why: str | None = None) -> str:
    if value is not None:
        return f"{value:+.2f}"
    return f"n/a ({why})" if why else "n/a"


def fmt_number(value: Any) -> str:
    """A metric or hyperparameter value, short."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{int(value):,}"
    return f"{value:.4g}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


# --------------------------------------------------------------------------- tables (data only)


def top_table(report: StudyReport) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Header and rows of the table of top trials and baselines: ``(css class, cells)`` per row.

    Rows: the base model, the starting point, the best trials in order, then any other trial
    with downstream results; a trial that is both x0 and among the best is one row.
    """
    roles: dict[int, list[str]] = {}
    trials: dict[int, TrialRecord] = {}
    for trial, role in [(report.x0, "x0"), *[(t, f"top-{i}") for i, t in enumerate(report.top, 1)]]:
        if trial is not None:
            roles.setdefault(trial.number, []).append(role)
            trials[trial.number] = trial
    for model in report.models:
        if model.trial is not None and model.trial.number not in trials:
            roles[model.trial.number] = list(model.roles)
            trials[model.trial.number] = model.trial
    tasks = list(report.tasks)
    metrics = sorted({k for t in trials.values() for k in t.metrics if k != report.metric})
    params = [p.name for p in report.params]
    # Downstream scores come right after the objective: the comparison this table is for.
    header = ["model", "role", "status", report.metric, *tasks, *params, *metrics]
    scores = {m.key: m.scores for m in report.models}
    base = [fmt_score(scores.get("base", {}).get(t)) for t in tasks]
    rows = [("baseline", ["base", "base", "", "", *base, *[""] * (len(params) + len(metrics))])]
    for number, trial in trials.items():
        key, role = f"trial-{number}", "/".join(roles[number])
        cells = [key, role, trial.status, fmt_loss(trial.value)]
        cells += [fmt_score(scores.get(key, {}).get(t)) for t in tasks]
        cells += [fmt_number(trial.params.get(p)) for p in params]
        cells += [fmt_number(trial.metrics.get(m)) for m in metrics]
        css = "best" if "top-1" in roles[number] else ("baseline" if role == "x0" else "")
        rows.append((css, cells))
    return header, rows


def correlation_table(report: StudyReport) -> tuple[list[str], list[list[str]]]:
    header = ["task", "metric", "rows per model", "trials", "Spearman ρ (loss, score)", "base model"]
    rows = [
        [c.task, c.metric, fmt_number(report.limits.get(c.task)) or "all", str(len(c.points)),
         fmt_rho(c.rho, c.missing_reason), fmt_score(c.base_score)]
        for c in report.correlations
    ]
    return header, rows


def evaluator_table(report: StudyReport) -> tuple[list[str], list[list[str]]]:
    """One row per in-trial evaluator: base model, best trial, constraint, rho of loss against it and its interval."""
    best = report.best
    header = ["evaluator", "trials (n)", "base model", f"best (trial {best.number})" if best else "best",
              "constraint", "Spearman ρ (loss, value)", "95% CI"]
    rows = []
    for ev in report.evaluators:
        ci = f"[{ev.ci[0]:+.2f}, {ev.ci[1]:+.2f}]" if ev.ci is not None else ""
        tuned = fmt_evaluator(best.metrics, ev.name) if best else ""
        rows.append(
            [ev.name, str(len(ev.points)), fmt_score(ev.base), tuned, ev.constraint or "",
             fmt_rho(ev.rho, ev.missing_reason), ci]
        )
    return header, rows


#: How :func:`evaluator_table` computed its interval, said under it.
EVALUATOR_NOTE = (f"ρ over the complete trials; 95% percentile bootstrap interval over {RESAMPLES} resamples of "
                  "the trials (fixed seed). In brackets: the change from the base model. A negative ρ means "
                  "a lower validation loss went with a higher value.")


def failure_table(report: StudyReport) -> tuple[list[str], list[list[str]]]:
    params = [p.name for p in report.params]
    header = ["trial", "status", "reason", *params]
    rows = [[str(t.number), t.status, t.reason or "", *[fmt_number(t.params.get(p)) for p in params]]
            for t in report.failures]
    return header, rows


def timing_table(report: StudyReport) -> list[tuple[str, str]]:
    t = report.timing
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.status_counts.items())) or "none"
    return [
        ("optimizer", f"{report.optimizer} (seed {report.seed})"),
        ("evaluations", f"{len(report.finished)} of {report.budget} ({counts})"),
        ("first start", t["first_start"] or ""),
        ("last end", t["last_end"] or ""),
        ("wall time", fmt_seconds(t["span_s"])),
        ("trial time, total", fmt_seconds(t["trial_s_total"])),
        ("trial time, mean", fmt_seconds(t["trial_s_mean"])),
        ("trial time, longest", fmt_seconds(t["trial_s_max"])),
    ]


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_number(v)}" for k, v in params.items())


def compare_table(compare: CompareReport) -> tuple[list[str], list[list[str]]]:
    header = ["study", "optimizer", "seed", "evaluations", "failures", f"best {compare.metric}", "best trial",
              "found at evaluation", *(f"{n} (vs base)" for n in compare.evaluators), "best hyperparameters",
              *compare.tasks]
    rows = []
    for s in compare.studies:
        r, best = s.report, s.report.best
        rows.append([
            s.label, r.optimizer, str(r.seed), f"{len(r.finished)}/{r.budget}", str(len(r.failures)),
            fmt_loss(best.value if best else None), str(best.number) if best else "",
            str(s.reached_best_at or ""),
            *(fmt_evaluator(best.metrics, n) if best else "" for n in compare.evaluators),
            _params_text(best.params if best else {}),
            *[fmt_score(s.best_scores.get(t)) for t in compare.tasks],
        ])
    return header, rows


# --------------------------------------------------------------------------- HTML


def study_html(report: StudyReport, figures: Figures) -> str:
    best = report.best
    parts = [f"<h1>lorahpo report: {_e(report.name)}</h1>", f'<p class="lead">{_e(_summary(report))}</p>']
    if report.data_summary:
        parts.append(f'<p class="note" id="data">{_e(report.data_summary)}</p>')
    parts += ["<h2>Search progress</h2>", _img(figures, "best_so_far", "best value so far against evaluation number")]
    if report.pareto:
        names = " and ".join(m for m, _ in report.objectives)
        parts += ["<h2>Pareto front</h2>",
                  f'<p class="note">{len(report.pareto)} trial(s) no other feasible trial beats '
                  f'in both {_e(names)}.</p>',
                  _img(figures, "pareto_front", "Pareto front of the first two objectives")]
    parts.append("<h2>Top trials and baselines</h2>")
    parts.append('<p class="note">base: the base model without adapter; x0: the starting point (default LoRA); '
                 "downstream scores are blank where a model was not evaluated (<code>lorahpo evaluate</code>).</p>")
    header, rows = top_table(report)
    table = _table("top-trials", header, [cells for _, cells in rows], [css for css, _ in rows])
    parts.append(f'<div class="wide">{table}</div>')
    parts.append("<h2>Validation loss against downstream scores</h2>")
    if report.correlations:
        parts.append(_img(figures, "downstream_vs_loss", "downstream score against validation loss per task"))
        header, corr = correlation_table(report)
        parts.append(_table("correlations", header, corr))
        parts.append('<p class="note">A negative ρ means a lower validation loss went with a higher score.</p>')
    else:
        command = f"lorahpo evaluate {report.directory}"
        parts.append(f"<p>No downstream results yet: run <code>{_e(command)}</code>.</p>")
    if report.evaluators:
        parts.append("<h2>Validation loss against in-trial downstream metrics</h2>")
        parts.append(_img(figures, "evaluators_vs_loss", "each in-trial evaluator against validation loss"))
        header, evaluated = evaluator_table(report)
        parts.append(_table("evaluators", header, evaluated))
        parts.append(f'<p class="note">{_e(EVALUATOR_NOTE)}</p>')
    parts += [
        "<h2>Hyperparameters</h2>",
        _img(figures, "parallel_coordinates", "parallel coordinates of hyperparameters coloured by loss"),
        _img(figures, "loss_vs_hyperparameters", "loss against each hyperparameter"),
    ]
    parts.append("<h2>Failures</h2>")
    if report.failures:
        header, fail = failure_table(report)
        parts.append(_table("failures", header, fail))
    else:
        parts.append('<p id="failures">No failed evaluation.</p>')
    parts.append("<h2>Configuration and timing</h2>")
    parts.append(_table("timing", ["", ""], [list(r) for r in timing_table(report)], show_header=False))
    parts.append(f'<pre id="config">{_e(report.config_yaml)}</pre>')
    parts.append("<details><summary>All evaluations</summary>")
    param_names = [p.name for p in report.params]
    every = [[str(t.number), t.status, fmt_loss(t.value), fmt_seconds(t.duration_s),
              *[fmt_number(t.params.get(n)) for n in param_names], t.reason or ""] for t in report.trials]
    header = ["trial", "status", report.metric, "duration", *param_names, "reason"]
    parts.append(_table("all-trials", header, every))
    parts.append("</details>")
    title = f"lorahpo report: {report.name}" + (f" (best {fmt_loss(best.value)})" if best else "")
    return _page(title, parts)


def compare_html(compare: CompareReport, figures: Figures) -> str:
    parts = [f"<h1>lorahpo comparison of {len(compare.studies)} studies</h1>"]
    parts += [f'<p class="note">Warning: {_e(w)}.</p>' for w in compare.warnings]
    parts.append(_img(figures, "compare_best_so_far", "best so far of each study against evaluation number"))
    header, rows = compare_table(compare)
    parts.append("<h2>Final results</h2>")
    parts.append(_table("studies", header, rows))
    if compare.tasks:
        parts.append('<p class="note">Downstream scores are those of each study\'s best trial, where evaluated.</p>')
    return _page("lorahpo comparison", parts)


def _page(title: str, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _img(figures: Figures, name: str, alt: str) -> str:
    png = figures.get(name)
    if png is None:
        return f'<p class="note">({_e(alt)}: nothing to draw yet.)</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img id="fig-{name}" alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'


def _table(table_id: str, header: list[str], rows: list[list[str]], classes: list[str] | None = None,
           show_header: bool = True) -> str:
    """An HTML table; columns holding only numbers are right-aligned, the others are text."""
    numeric = [all(_numeric(row[i]) for row in rows) for i in range(len(header))]

    def cell(tag: str, i: int, text: str) -> str:
        css = "" if numeric[i] else ' class="text"'
        return f"<{tag}{css}>{_e(text)}</{tag}>"

    out = [f'<table id="{table_id}">']
    if show_header:
        out.append("<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr></thead>")
    out.append("<tbody>")
    for n, row in enumerate(rows):
        css = f' class="{classes[n]}"' if classes and classes[n] else ""
        out.append(f"<tr{css}>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _numeric(text: str) -> bool:
    """A number as the formatters write it (``1,234``, ``-0.80``, ``1e-05``), or an empty cell."""
    return not text or text.replace(",", "").replace(".", "", 1).lstrip("+-").replace("e-", "", 1).isdigit()


def _summary(report: StudyReport) -> str:
    best = report.best
    text = (f"{report.optimizer} (seed {report.seed}) searched {len(report.params)} hyperparameters "
            f"in {len(report.finished)} of {report.budget} evaluations, {len(report.failures)} failed. ")
    if best is not None:
        text += f"Best {report.metric}: {fmt_loss(best.value)} (trial {best.number}: {_params_text(best.params)})"
        if report.x0 is not None and report.x0.value is not None:
            text += f"; the starting point (trial {report.x0.number}) reached {fmt_loss(report.x0.value)}"
        text += "."
    else:
        text += "No evaluation has completed yet."
    return text


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------- Markdown


def study_markdown(report: StudyReport, files: dict[str, str]) -> str:
    lines = [f"# lorahpo report: {report.name}", "", _summary(report), ""]
    if report.data_summary:
        lines += [report.data_summary, ""]
    lines += _md_image(files, "best_so_far", "best so far")
    header, rows = top_table(report)
    lines += ["## Top trials and baselines", "", *_md_table(header, [cells for _, cells in rows]), ""]
    if report.correlations:
        lines += ["## Validation loss against downstream scores", ""]
        lines += _md_image(files, "downstream_vs_loss", "downstream against loss")
        header, corr = correlation_table(report)
        lines += [*_md_table(header, corr), ""]
    if report.evaluators:
        lines += ["## Validation loss against in-trial downstream metrics", ""]
        lines += _md_image(files, "evaluators_vs_loss", "in-trial evaluators against loss")
        header, evaluated = evaluator_table(report)
        lines += [*_md_table(header, evaluated), "", EVALUATOR_NOTE, ""]
    lines += ["## Hyperparameters", ""]
    lines += _md_image(files, "parallel_coordinates", "parallel coordinates")
    lines += _md_image(files, "loss_vs_hyperparameters", "loss against each hyperparameter")
    lines += ["## Failures", ""]
    if report.failures:
        header, fail = failure_table(report)
        lines += [*_md_table(header, fail), ""]
    else:
        lines += ["No failed evaluation.", ""]
    lines += ["## Timing", "", *_md_table(["", ""], [list(r) for r in timing_table(report)]), ""]
    return "\n".join(lines)


def compare_markdown(compare: CompareReport, files: dict[str, str]) -> str:
    lines = [f"# lorahpo comparison of {len(compare.studies)} studies", ""]
    lines += [f"Warning: {w}." for w in compare.warnings]
    lines += _md_image(files, "compare_best_so_far", "best so far per study")
    header, rows = compare_table(compare)
    lines += [*_md_table(header, rows), ""]
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *[line(r) for r in rows]]


def _md_image(files: dict[str, str], name: str, alt: str) -> list[str]:
    return [f"![{alt}]({files[name]})", ""] if name in files else []


# --------------------------------------------------------------------------- files


def _write_pngs(figures: Figures, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, png in figures.items():
        path = out / f"{name}.png"
        if png is None:
            path.unlink(missing_ok=True)  # a figure of an older report must not linger
            continue
        write_atomic(path, png)
        paths[name] = path
    return paths
