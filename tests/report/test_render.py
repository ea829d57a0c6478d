"""Rendered reports: parse the HTML and check that the plots and tables are there with the right numbers."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

from lorahpo.evaluation.store import model_key
from lorahpo.report.data import compare_report, study_report
from lorahpo.report.render import write_compare, write_report

from .conftest import FAILURE_REASON, lowest_loss

FIGURES = ["best_so_far", "parallel_coordinates", "loss_vs_hyperparameters", "downstream_vs_loss"]


class Page(HTMLParser):
    """The images, tables (by id, as rows of cell texts) and <pre> texts of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: dict[str, dict[str, str]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.pre: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._pre: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images[attrs.get("id", "")] = attrs
        elif tag == "table":
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._pre = attrs.get("id", "")
            self.pre[self._pre] = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._pre = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._pre is not None:
            self.pre[self._pre] += data


def rows_by_model(table):
    header, *rows = table
    return header, {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def png_of(img):
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    return base64.b64decode(img["src"][len(prefix):])


def test_the_report_embeds_every_plot_and_writes_them_as_files(synthetic, tmp_path):
    paths = write_report(study_report(synthetic.directory, top=3), tmp_path / "out")
    page = Page(paths["html"].read_text())
    assert sorted(page.images) == sorted(f"fig-{name}" for name in FIGURES)
    for name in FIGURES:
        png = png_of(page.images[f"fig-{name}"])
        assert png.startswith(b"\x89PNG") and len(png) > 10_000  # a drawn figure, not an empty canvas
        assert png == paths[name].read_bytes()
        assert page.images[f"fig-{name}"]["alt"]
    assert "src=\"http" not in paths["html"].read_text()  # self-contained


def test_top_trials_table_puts_metrics_and_downstream_next_to_the_baselines(synthetic, tmp_path):
    report = study_report(synthetic.directory, top=3)
    page = Page(write_report(report, tmp_path / "out")["html"].read_text())
    header, rows = rows_by_model(page.tables["top-trials"])
    assert header[:6] == ["model", "role", "status", "validation_loss", "bbh-bigbench", "humaneval-offline"]
    assert {"trainable_params", "rank", "dropout", "alpha", "learning_rate"} <= set(header)
    best = report.top
    assert list(rows) == ["base", "trial-0", *[model_key(t.number) for t in best]]
    assert [rows[k]["role"] for k in rows] == ["base", "x0", "top-1", "top-2", "top-3"]
    assert rows["base"]["validation_loss"] == "" and rows["base"]["bbh-bigbench"] == "0.210"
    for trial in [report.x0, *best]:
        row = rows[model_key(trial.number)]
        assert row["validation_loss"] == f"{trial.value:.4f}"
        assert row["rank"] == str(trial.params["rank"])
        for task, score in synthetic.scores[model_key(trial.number)].items():
            assert row[task] == f"{score:.3f}"
    assert rows[model_key(best[2].number)]["humaneval-offline"] == ""  # not evaluated there


def test_correlations_failures_config_and_timing_are_shown(synthetic, tmp_path):
    report = study_report(synthetic.directory, top=3)
    text = write_report(report, tmp_path / "out")["html"].read_text()
    page = Page(text)
    header, *rows = page.tables["correlations"]
    corr = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert corr["bbh-bigbench"]["Spearman ρ (loss, score)"] == "-0.80"
    assert corr["bbh-bigbench"]["trials"] == "4" and corr["bbh-bigbench"]["base model"] == "0.210"
    assert corr["bbh-bigbench"]["rows per model"] == "2"
    assert corr["humaneval-offline"]["Spearman ρ (loss, score)"] == "+0.50"  # worked out in test_data.py

    header, *failures = page.tables["failures"]
    assert [row[:3] for row in failures] == [[str(synthetic.failed), "failed", FAILURE_REASON]]
    assert "<b>CUDA</b>" not in text  # escaped, shown as text
    timing = dict(page.tables["timing"])
    assert timing["optimizer"] == "nomad (seed 0)"
    assert timing["evaluations"] == "9 of 9 (complete 8, failed 1)"
    assert "python: lorahpo.toys:lora_surface" in page.pre["config"]
    all_trials = page.tables["all-trials"]
    assert len(all_trials) == 1 + 9


def test_the_markdown_summary_names_the_best_and_links_the_plots(synthetic, tmp_path):
    report = study_report(synthetic.directory, top=3)
    paths = write_report(report, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert md.startswith("# lorahpo report: toy-nomad")
    best = lowest_loss(synthetic.directory)
    assert f"Best validation_loss: {best.value:.4f} (trial {best.number}" in md
    for name in FIGURES:
        assert f"({name}.png)" in md
    assert "| base | base |" in md and "| -0.80 |" in md


def test_a_study_without_downstream_results_says_how_to_get_them(plain, tmp_path):
    paths = write_report(study_report(plain.directory), tmp_path / "out")
    page = Page(paths["html"].read_text())
    assert "fig-downstream_vs_loss" not in page.images and "correlations" not in page.tables
    assert "fig-evaluators_vs_loss" not in page.images and "evaluators" not in page.tables
    assert "lorahpo evaluate" in paths["html"].read_text()
    assert not (tmp_path / "out" / "downstream_vs_loss.png").exists()


def test_compare_puts_all_curves_on_one_plot_and_tabulates_the_studies(synthetic, plain, tmp_path):
    compare = compare_report([synthetic.directory, plain.directory])
    paths = write_compare(compare, tmp_path / "cmp")
    page = Page(paths["html"].read_text())
    assert list(page.images) == ["fig-compare_best_so_far"] and png_of(page.images["fig-compare_best_so_far"])
    header, *rows = page.tables["studies"]
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert list(table) == ["toy", "toy-random"]
    for label, directory in [("toy", synthetic.directory), ("toy-random", plain.directory)]:
        best = lowest_loss(directory)
        assert table[label]["best validation_loss"] == f"{best.value:.4f}"
        assert table[label]["best trial"] == str(best.number)
    assert table["toy"]["optimizer"] == "nomad" and table["toy-random"]["optimizer"] == "random"
    assert table["toy"]["evaluations"] == "9/9" and table["toy"]["failures"] == "1"
    best_key = model_key(lowest_loss(synthetic.directory).number)
    assert table["toy"]["bbh-bigbench"] == f"{synthetic.scores[best_key]['bbh-bigbench']:.3f}"
    assert table["toy-random"]["bbh-bigbench"] == ""
    assert "![best so far per study](compare_best_so_far.png)" in paths["markdown"].read_text()

