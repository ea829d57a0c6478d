"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes report data (:mod:`lorahpo.report.data`) and returns one PNG, or None when
there is nothing to draw.
"""

from __future__ import annotations

import io
import math
from typing import Any

from lorahpo.report.data import CompareReport, ParamInfo, StudyReport, axis_position

_BEST = "#d62728"
_X0 = "#1f77b4"
_FAILED = "#999999"
_DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _upper_limit(values: list[float]) -> float:
    """A y-axis top that keeps the bulk of the values readable when a few trials blew up."""
    ordered = sorted(values)
    if len(ordered) < 5:
        return ordered[-1] + 0.05 * (ordered[-1] - ordered[0] or 1)
    q90 = ordered[int(0.9 * (len(ordered) - 1))]
    spread = q90 - ordered[0] or 1
    return min(ordered[-1], q90 + 0.5 * spread) + 0.05 * spread


def best_so_far(report: StudyReport) -> bytes | None:
    """Each evaluation's value (dots) and the best value so far (steps), failures marked on top."""
    done = [(i, v) for i, _, v, _ in report.curve if v is not None]
    if not done:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.2))
    values = [v for _, v in done]
    top = _upper_limit(values)
    shown = [(i, v) for i, v in done if v <= top]
    ax.scatter([i for i, _ in shown], [v for _, v in shown], s=22, color="#555555", alpha=0.7, label="evaluation")
    clipped = [(i, top) for i, v in done if v > top]
    if clipped:
        ax.scatter([i for i, _ in clipped], [v for _, v in clipped], marker="^", s=40, color="#555555",
                   label="off the scale")
    steps = [(i, b) for i, _, _, b in report.curve if b is not None]
    ax.step([i for i, _ in steps], [b for _, b in steps], where="post", color=_BEST, lw=2, label="best so far")
    failed = [i for i, _, v, _ in report.curve if v is None]
    if failed:
        ax.scatter(failed, [top] * len(failed), marker="x", s=50, color=_FAILED, label="failed", zorder=3)
    final = steps[-1]
    ax.annotate(f"{final[1]:.4f}", final, textcoords="offset points", xytext=(4, 6), color=_BEST)
    ax.set_xlabel("evaluation number")
    ax.set_ylabel(report.metric)
    ax.set_ylim(top=top + 0.04 * (top - min(values) or 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{report.name}: {report.metric} ({report.optimizer})")
    ax.grid(alpha=0.3)
    # Below the axes: inside, the legend would hide the failures drawn along the top edge.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize=8, frameon=False)
    return _png(fig)


def pareto_front(report: StudyReport) -> bytes | None:
    """With several objectives: the main one against the second, the Pareto front joined up."""
    if len(report.objectives) < 2 or not report.pareto:
        return None
    (m1, d1), (m2, d2) = report.objectives[:2]
    done = [t for t in report.trials if t.status == "complete" and m1 in t.metrics and m2 in t.metrics]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    infeasible = set(report.infeasible)
    front = {t.number for t in report.pareto}
    rest = [t for t in done if t.number not in front and t.number not in infeasible]
    ax.scatter([t.metrics[m1] for t in rest], [t.metrics[m2] for t in rest], s=22, color="#555555", alpha=0.6,
               label="dominated")
    bad = [t for t in done if t.number in infeasible]
    if bad:
        ax.scatter([t.metrics[m1] for t in bad], [t.metrics[m2] for t in bad], marker="x", s=40, color=_FAILED,
                   label="over a constraint")
    pts = sorted((t.metrics[m1], t.metrics[m2], t.number) for t in report.pareto)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=_BEST, lw=1.5, label="Pareto front")
    for x, y, n in pts:
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=_BEST)
    ax.set_xlabel(f"{m1} ({d1})")
    ax.set_ylabel(f"{m2} ({d2})")
    ax.set_title(f"{report.name}: Pareto front ({report.optimizer})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _ticks(param: ParamInfo) -> list[tuple[float, str]]:
    if param.scale == "choice":
        return [(axis_position(param, v) or 0.0, _short(v)) for v in param.values]
    assert param.low is not None and param.high is not None
    if param.scale == "log":
        lo, hi = math.log10(param.low), math.log10(param.high)
        return [((e - lo) / (hi - lo), f"1e{e}") for e in range(math.ceil(lo), math.floor(hi) + 1)]
    return [(0.0, _short(param.low)), (0.5, _short((param.low + param.high) / 2)), (1.0, _short(param.high))]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parallel_coordinates(report: StudyReport) -> bytes | None:
    """One line per evaluation across the hyperparameter axes and the loss, coloured by loss."""
    complete = [t for t in report.finished if t.value is not None]
    if not complete or not report.params:
        return None
    plt = _pyplot()
    from matplotlib import cm, colormaps, colors, patheffects

    values = [t.value for t in complete if t.value is not None]
    top = _upper_limit(values)
    low = min(values)
    norm = colors.Normalize(vmin=low, vmax=top)
    cmap = colormaps["viridis_r"]  # low loss bright: the eye goes to the good trials
    n = len(report.params)
    fig, ax = plt.subplots(figsize=(max(7, 1.9 * (n + 1)), 4.6))
    xs = list(range(n + 1))

    def ys(trial: Any) -> list[float] | None:
        pos = [axis_position(p, trial.params.get(p.name)) for p in report.params]
        if any(p is None for p in pos):
            return None
        loss = 1.0 if trial.value is None else (min(trial.value, top) - low) / ((top - low) or 1)
        return [*pos, loss]  # type: ignore[list-item]

    for trial in report.failures:
        line = ys(trial)
        if line is not None:
            ax.plot(xs, line, color=_FAILED, lw=1, ls="--", alpha=0.7)
    best = report.best
    for trial in sorted(complete, key=lambda t: -(t.value or 0)):  # best drawn last, on top
        line = ys(trial)
        if line is not None and trial.value is not None:
            is_best = best is not None and trial.number == best.number
            outline = [patheffects.withStroke(linewidth=5.5, foreground="black")] if is_best else None
            ax.plot(xs, line, color=cmap(norm(min(trial.value, top))), lw=3 if is_best else 1.3,
                    alpha=1.0 if is_best else 0.8, zorder=3 if is_best else 2, path_effects=outline)
    for x, param in enumerate(report.params):
        ax.axvline(x, color="black", lw=0.8)
        for y, text in _ticks(param):
            ax.text(x - 0.04, y, text, ha="right", va="center", fontsize=7)
    ax.axvline(n, color="black", lw=0.8)
    for frac in (0, 0.5, 1):
        ax.text(n + 0.04, frac, f"{low + frac * (top - low):.3g}", ha="left", va="center", fontsize=7)
    ax.set_xticks(xs, [p.name for p in report.params] + [report.metric])
    ax.set_yticks([])
    ax.set_xlim(-0.5, n + 0.5)
    ax.set_ylim(-0.05, 1.05)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=report.metric, pad=0.08)
    ax.set_title("hyperparameters of each evaluation (dashed: failed; outlined: best)")
    return _png(fig)


def loss_vs_params(report: StudyReport) -> bytes | None:
    """The objective against each hyperparameter, best and start point marked."""
    complete = [t for t in report.finished if t.value is not None]
    if not complete or not report.params:
        return None
    plt = _pyplot()
    n = len(report.params)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False, sharey=True)
    values = [t.value for t in complete if t.value is not None]
    top = _upper_limit(values)
    for ax, param in zip(axes.flat, report.params, strict=False):
        def x_of(trial: Any, param: ParamInfo = param) -> Any:
            value = trial.params.get(param.name)
            return param.values.index(value) if param.scale == "choice" and value in param.values else value

        pts = [(x_of(t), min(t.value, top)) for t in complete
               if t.value is not None and t.params.get(param.name) is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=20, color="#555555", alpha=0.75)
        for trial, color, marker, label in ((report.x0, _X0, "s", "start (x0)"), (report.best, _BEST, "*", "best")):
            if trial is not None and trial.value is not None and trial.params.get(param.name) is not None:
                ax.scatter([x_of(trial)], [min(trial.value, top)], s=120 if marker == "*" else 60, color=color,
                           marker=marker, zorder=3, label=label)
        if param.scale == "log":
            ax.set_xscale("log")
        if param.scale != "choice" and param.low is not None and param.high is not None:
            # The whole searched range, so that the plot shows where in it the trials went.
            if param.scale == "log":
                ax.set_xlim(param.low / 1.5, param.high * 1.5)
            else:
                pad = 0.03 * (param.high - param.low or 1)
                ax.set_xlim(param.low - pad, param.high + pad)
        if param.scale == "choice":
            ax.set_xticks(range(len(param.values)), [_short(v) for v in param.values], fontsize=8)
            ax.set_xlim(-0.5, len(param.values) - 0.5)
        ax.set_xlabel(param.name)
        ax.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    axes[0][0].set_ylabel(report.metric)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{report.metric} against each hyperparameter")
    fig.tight_layout()
    return _png(fig)


def downstream_vs_loss(report: StudyReport) -> bytes | None:
    """Each downstream score against the validation loss of the evaluated trials, with Spearman's rho."""
    drawn = [c for c in report.correlations if c.points or c.base_score is not None]
    if not drawn:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.4 * len(drawn), 3.8), squeeze=False)
    roles = {m.trial.number: f"#{m.trial.number} {'/'.join(m.roles)}" for m in report.models if m.trial is not None}
    for ax, corr in zip(axes[0], drawn, strict=True):
        # Labels alternate above and below, so neighbours along the loss axis do not overwrite each other.
        for k, (number, loss, score) in enumerate(sorted(corr.points, key=lambda p: p[1])):
            is_x0 = report.x0 is not None and number == report.x0.number
            ax.scatter([loss], [score], s=40, color=_X0 if is_x0 else "#444444", zorder=3)
            ax.annotate(roles.get(number, f"#{number}"), (loss, score), textcoords="offset points",
                        xytext=(4, 5 if k % 2 == 0 else -12), fontsize=8)
        if corr.base_score is not None:
            ax.axhline(corr.base_score, color=_FAILED, ls="--", lw=1, label=f"base model {corr.base_score:.3f}")
            ax.legend(fontsize=8)
        rho = f"n/a, {corr.missing_reason}" if corr.rho is None else f"{corr.rho:+.2f}"
        ax.set_title(f"{corr.task}\nSpearman ρ = {rho} (n={len(corr.points)})", fontsize=10)
        ax.set_xlabel(report.metric)
        ax.set_ylabel(corr.metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def evaluators_vs_loss(report: StudyReport) -> bytes | None:
    """Each in-trial evaluator against validation loss over complete trials: base model and constraint as lines."""
    drawn = [e for e in report.evaluators if e.points]
    if not drawn:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.4 * len(drawn), 3.8), squeeze=False)
    infeasible = set(report.infeasible)
    best = report.best.number if report.best is not None else None
    for ax, ev in zip(axes[0], drawn, strict=True):
        inside = [(x, y) for n, x, y in ev.points if n not in infeasible and n != best]
        ax.scatter([p[0] for p in inside], [p[1] for p in inside], s=24, color="#444444", alpha=0.75, label="trial")
        over = [(x, y) for n, x, y in ev.points if n in infeasible]
        if over:
            ax.scatter([p[0] for p in over], [p[1] for p in over], marker="x", s=40, color=_FAILED,
                       label="over a constraint")
        top = [(x, y) for n, x, y in ev.points if n == best]
        if top:
            ax.scatter([top[0][0]], [top[0][1]], marker="*", s=140, color=_BEST, zorder=3, label="best")
        if ev.base is not None:
            ax.axhline(ev.base, color=_X0, ls="--", lw=1, label=f"base model {ev.base:.3f}")
        if ev.bound is not None:
            ax.axhline(ev.bound, color=_BEST, ls=":", lw=1.2, label=ev.constraint)
        if ev.rho is None:
            rho = f"n/a, {ev.missing_reason}"
        else:
            assert ev.ci is not None
            rho = f"{ev.rho:+.2f}, 95% CI [{ev.ci[0]:+.2f}, {ev.ci[1]:+.2f}]"
        ax.set_title(f"{ev.name}\nSpearman ρ = {rho} (n={len(ev.points)})", fontsize=10)
        ax.set_xlabel("validation_loss")
        ax.set_ylabel(ev.name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def compare_curves(compare: CompareReport) -> bytes | None:
    """The best-so-far curves of several studies on one plot."""
    curves = [(s.label, [(i, b) for i, _, _, b in s.report.curve if b is not None]) for s in compare.studies]
    curves = [(label, pts) for label, pts in curves if pts]
    if not curves:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    # Studies often share their first evaluations (the same start point, the same seeded random
    # start-up): distinct line styles keep overlapping curves visible.
    styles = ["-", "--", ":", "-."]
    for n, (label, pts) in enumerate(curves):
        ax.step([i for i, _ in pts], [b for _, b in pts], where="post", lw=2.2, ls=styles[n % len(styles)],
                label=f"{label} ({pts[-1][1]:.4f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation number")
    ax.set_ylabel(f"best {compare.metric} so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("best so far, per study")
    return _png(fig)
