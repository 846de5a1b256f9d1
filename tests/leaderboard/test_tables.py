"""Leaderboard tables against hand-computed numbers; exports (CSV, Markdown, LaTeX); reported rows."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import pandas as pd
import pytest

from zsad_bench.commands import leaderboard as command
from zsad_bench.leaderboard import category_table, domain_table, failures, leaderboard_table, load_results
from zsad_bench.reported import add_reported, load_reported, reported_comparison
from zsad_bench.tables import latex_escape, to_csv, to_latex, to_markdown

# image_auroc per (method, dataset) for seeds 0 and 1 (one category each, so the summary is the value)
VALUES = {
    ("A", "d_1"): (0.90, 0.80),
    ("A", "d_2"): (0.70, 0.70),
    ("A", "d_3"): (0.50, 0.50),
    ("B", "d_1"): (0.80, 0.80),
    ("B", "d_2"): (0.75, 0.85),
    ("B", "d_3"): (0.60, 0.60),
    ("C", "d_1"): (0.60, 0.70),
    ("C", "d_2"): (0.90, 0.90),
    ("C", "d_3"): (0.60, 0.60),
}


@pytest.fixture
def three(tmp_path, job_writer):
    for (method, dataset), seeds in VALUES.items():
        for seed, v in enumerate(seeds):
            job_writer(tmp_path, method, dataset, seed, {"cat": v})
    return load_results(tmp_path)


def test_cells_are_means_and_sample_stds_over_seeds(three):
    t = leaderboard_table(three, ["image_auroc"])
    assert [r.label for r in t.rows] == ["A", "B", "C"]
    assert t.groups == ["d_1", "d_2", "d_3", "Average", "Rank"]
    assert t.value("A", "d_1", "image_auroc") == pytest.approx(85.0)
    assert t.value("A", "d_1", "image_auroc", "std") == pytest.approx(math.sqrt(50))  # (90, 80): ddof 1
    assert t.value("A", "d_2", "image_auroc", "std") == pytest.approx(0.0)
    assert t.value("B", "d_2", "image_auroc") == pytest.approx(80.0)
    assert t.value("C", "d_1", "image_auroc", "n") == 2


def test_average_column_hand_computed(three):
    t = leaderboard_table(three, ["image_auroc"])
    assert t.value("A", "Average", "image_auroc") == pytest.approx((85 + 70 + 50) / 3)
    assert t.value("B", "Average", "image_auroc") == pytest.approx((80 + 80 + 60) / 3)
    assert t.value("C", "Average", "image_auroc") == pytest.approx((65 + 90 + 60) / 3)
    # per-seed averages of A: (90+70+50)/3 and (80+70+50)/3 -> sample std
    a0, a1 = (90 + 70 + 50) / 3, (80 + 70 + 50) / 3
    assert t.value("A", "Average", "image_auroc", "std") == pytest.approx(abs(a0 - a1) / math.sqrt(2))


def test_average_ranks_hand_computed(three):
    # d_1: A 85 > B 80 > C 65 -> 1, 2, 3;  d_2: C 90 > B 80 > A 70 -> 3, 2, 1 for A, B, C
    # d_3: B = C = 60 > A 50 -> A 3, B 1.5, C 1.5
    t = leaderboard_table(three, ["image_auroc"])
    assert t.value("A", "Rank", "image_auroc") == pytest.approx((1 + 3 + 3) / 3)
    assert t.value("B", "Rank", "image_auroc") == pytest.approx((2 + 2 + 1.5) / 3)
    assert t.value("C", "Rank", "image_auroc") == pytest.approx((3 + 1 + 1.5) / 3)


def test_rank_uses_only_datasets_every_row_has(tmp_path, job_writer):
    job_writer(tmp_path, "A", "d_1", 0, {"c": 0.9})
    job_writer(tmp_path, "A", "d_2", 0, {"c": 0.1})
    job_writer(tmp_path, "B", "d_1", 0, {"c": 0.8})
    t = leaderboard_table(load_results(tmp_path), ["image_auroc"])
    assert t.value("A", "Rank", "image_auroc") == 1.0
    assert t.value("B", "Rank", "image_auroc") == 2.0
    assert math.isnan(t.value("B", "Average", "image_auroc"))  # B lacks d_2


def test_best_bold_second_underlined_ties_alike(three):
    t = leaderboard_table(three, ["image_auroc"])
    assert t.highlight("d_1", "image_auroc") == {"A": "best", "B": "second"}
    assert t.highlight("d_3", "image_auroc") == {"B": "best", "C": "best", "A": "second"}
    assert t.highlight("Rank", "image_auroc") == {"B": "best", "C": "best", "A": "second"}  # lower is better
    md = to_markdown(t)
    assert "| A | **85.0** ± 7.1 |" in md
    assert "<u>80.0</u> ± 0.0" in md
    tex = to_latex(t)
    assert r"\textbf{85.0} $\pm$ 7.1" in tex
    assert r"\underline{80.0}" in tex


def _check_latex_shape(tex: str, n_cols: int) -> None:
    assert tex.count("{") == tex.count("}")
    begins, ends = re.findall(r"\\begin\{(\w+)\}", tex), re.findall(r"\\end\{(\w+)\}", tex)
    assert begins == list(reversed(ends))
    assert re.search(r"(?<!\\)_", re.sub(r"\$[^$]*\$", "", tex)) is None  # every underscore escaped
    lines = tex.splitlines()
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert body
    for line in body:
        assert line.endswith(r"\\")
        assert len(re.findall(r"(?<!\\)&", line)) == n_cols - 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert lines.count(rule) == 1


def test_latex_is_compile_shaped(three):
    t = leaderboard_table(three, ["image_auroc", "image_f1max"])  # f1max absent: only present metrics
    tex = to_latex(t)
    assert tex.count(r"\multicolumn") == 0  # one metric per group here
    _check_latex_shape(tex, 1 + 5)
    assert "d\\_1" in tex


def test_latex_pair_cells_and_multicolumn_headers(tmp_path, job_writer):
    for m, (a, f) in {"A": (0.9, 0.5), "B": (0.8, 0.6)}.items():
        job_writer(tmp_path, m, "mvtec_ad", 0, {"c": {"image_auroc": a, "image_f1max": f}})
        job_writer(tmp_path, m, "visa", 0, {"c": {"image_auroc": a - 0.1, "image_f1max": f}})
    t = leaderboard_table(load_results(tmp_path), ["image_auroc", "image_f1max"], rank=False)
    pair = to_latex(t, pair=True)
    _check_latex_shape(pair, 1 + 3)
    assert r"(\textbf{90.0}, \underline{50.0})" in pair
    assert "(I-AUROC, I-F1max)" in pair
    wide = to_latex(t)
    _check_latex_shape(wide, 1 + 6)
    assert r"\multicolumn{2}{c}{mvtec\_ad}" in wide
    assert r"\cmidrule(lr){2-3}" in wide
    assert "(**90.0**, <u>50.0</u>)" in to_markdown(t, pair=True)
    _compile(pair + wide, tmp_path)


def _compile(tex: str, folder) -> None:
    """Compile with pdflatex when it is installed (the shape checks run everywhere)."""
    if shutil.which("pdflatex") is None:
        return
    doc = "\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}\\begin{document}\n" + tex
    (folder / "t.tex").write_text(doc + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "t.tex"], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(three, tmp_path):
    _compile(to_latex(leaderboard_table(three, ["image_auroc"])), tmp_path)


def test_latex_escape():
    assert (
        latex_escape("a_b & 50% #1 {x} ~ ^ ‡")
        == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} $^\ddagger$"
    )


def test_markdown_rows_have_equal_cells(three):
    md = to_markdown(leaderboard_table(three, ["image_auroc"]))
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({ln.count(" | ") for ln in table_lines if not ln.startswith("|:")}) == 1


def test_csv_round_trip(three, tmp_path):
    t = leaderboard_table(three, ["image_auroc"])
    to_csv(t, tmp_path / "t.csv")
    df = pd.read_csv(tmp_path / "t.csv").set_index("row")
    assert df.loc["A", "d_1/image_auroc"] == pytest.approx(85.0)
    assert df.loc["A", "d_1/image_auroc_std"] == pytest.approx(math.sqrt(50))
    assert df.loc["B", "Rank/image_auroc"] == pytest.approx(5.5 / 3)


def test_domain_means_hand_computed(tmp_path, job_writer):
    dom = {"i1": "industrial", "i2": "industrial", "m1": "medical", "x": "medical", "y": "medical"}
    job_writer(tmp_path, "A", "mix", 0, {"i1": 0.8, "i2": 0.6, "m1": 0.9}, domains=dom)
    job_writer(tmp_path, "A", "med", 0, {"x": 0.7, "y": 0.5}, domains=dom)
    job_writer(tmp_path, "B", "mix", 0, {"i1": 0.5, "i2": 0.5, "m1": 0.5}, domains=dom)
    t = domain_table(load_results(tmp_path), ["image_auroc"])
    assert t.groups == ["industrial", "medical"]
    assert t.value("A", "industrial", "image_auroc") == pytest.approx(70.0)  # mix: (80 + 60) / 2
    assert t.value("A", "medical", "image_auroc") == pytest.approx(75.0)  # (mix 90 + med (70 + 50) / 2) / 2
    assert t.value("B", "industrial", "image_auroc") == pytest.approx(50.0)
    assert math.isnan(t.value("B", "medical", "image_auroc"))  # B has no "med": not comparable


def test_category_table(tmp_path, job_writer):
    job_writer(tmp_path, "A", "d", 0, {"c1": 0.8, "c2": 0.6})
    job_writer(tmp_path, "A", "d", 1, {"c1": 0.6, "c2": 0.6})
    t = category_table(load_results(tmp_path), "d", ["image_auroc"])
    assert t.groups == ["c1", "c2", "Mean"]
    assert t.value("A", "c1", "image_auroc") == pytest.approx(70.0)
    assert t.value("A", "Mean", "image_auroc") == pytest.approx((70.0 + 60.0) / 2)


def test_setting_parts_appear_in_labels_only_when_they_vary(tmp_path, job_writer):
    job_writer(tmp_path, "A", "d", 0, {"c": 0.9}, shots=0)
    job_writer(tmp_path, "A", "d", 0, {"c": 0.8}, shots=2)
    t = leaderboard_table(load_results(tmp_path), ["image_auroc"])
    assert [r.label for r in t.rows] == ["A [0-shot]", "A [2-shot]"]


def test_partial_random_failed_and_invalid_jobs(tmp_path, job_writer):
    job_writer(tmp_path, "A", "d", 0, {"c1": 0.9, "c2": 0.1}, status="partial", failed=("c2",))
    job_writer(tmp_path, "R", "d", 0, {"c1": 0.5, "c2": 0.5}, random_weights=True)
    job_writer(tmp_path, "F", "d", 0, {"c1": 0.5}, status="failed")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{}")
    res = load_results(tmp_path)
    t = leaderboard_table(res, ["image_auroc"])
    rows = {r.label: r.marks for r in t.rows}
    assert rows == {"A": "*", "R": "‡"}  # the failed job has no row
    assert t.value("A", "d", "image_auroc") == pytest.approx(90.0)
    assert any("random backbone weights" in n for n in t.footnotes)
    fails = failures(res).set_index("job")
    assert fails.loc["F/d/bb/k0_s0", "error"] == "deliberately broken"
    assert fails.loc["A/d/bb/k0_s0", "failed_categories"] == "c2"
    assert fails.loc["broken", "status"] == "invalid"


def test_duplicate_jobs_keep_the_newest(tmp_path, job_writer):
    job_writer(tmp_path / "s1", "A", "d", 0, {"c": 0.5}, created="2026-01-01T00:00:00")
    job_writer(tmp_path / "s2", "A", "d", 0, {"c": 0.7}, created="2026-02-01T00:00:00")
    t = leaderboard_table(load_results(tmp_path), ["image_auroc"])
    assert t.value("A", "d", "image_auroc") == pytest.approx(70.0)


# ----------------------------------------------------------------------------- reported numbers
REPORTED = """source,table,page,method,dataset,category,domain,shots,metric,value,note
AdaCLIP,1,9,A,d_1,,industrial,0,image_auroc,84.0,
AdaCLIP,1,9,R,d_1,,industrial,0,image_auroc,70.0,
AdaCLIP,9,20,A,d_1,cat,industrial,0,image_auroc,88.0,per category
"""


@pytest.fixture
def with_random(tmp_path, job_writer):
    job_writer(tmp_path / "res", "A", "d_1", 0, {"cat": 0.85})
    job_writer(tmp_path / "res", "R", "d_1", 0, {"cat": 0.60}, random_weights=True)
    (tmp_path / "paper_reported.csv").write_text(REPORTED)
    return load_results(tmp_path / "res"), load_reported(tmp_path / "paper_reported.csv")


def test_reported_comparison_and_delta(with_random):
    res, rep = with_random
    comp = reported_comparison(res, rep)
    assert set(comp["method"]) == {"A"}  # random-weight rows are not compared by default
    dataset_row = comp[comp["category"] == ""].iloc[0]
    assert dataset_row["ours"] == pytest.approx(85.0)
    assert dataset_row["delta"] == pytest.approx(1.0)
    assert comp[comp["category"] == "cat"].iloc[0]["delta"] == pytest.approx(-3.0)
    assert set(reported_comparison(res, rep, compare_random=True)["method"]) == {"A", "R"}


def test_anomalyclip_plus_is_compared_with_few_shot_anomalyclip(tmp_path, job_writer):
    job_writer(tmp_path / "res", "anomalyclip", "d_1", 0, {"cat": 0.80})
    job_writer(tmp_path / "res", "anomalyclip", "d_1", 0, {"cat": 0.90}, shots=1)
    (tmp_path / "rep.csv").write_text(
        "source,table,page,method,dataset,category,domain,shots,metric,value,note\n"
        "P,1,,anomalyclip_plus,d_1,,industrial,1,image_auroc,92.0,\n"
        "P,1,,anomalyclip_plus,d_1,,industrial,0,image_auroc,99.0,a zero-shot row under the alias\n"
        "P,1,,anomalyclip,d_1,,industrial,0,image_auroc,81.0,\n"
    )
    comp = reported_comparison(load_results(tmp_path / "res"), load_reported(tmp_path / "rep.csv"))
    got = {(r.method, r.shots): round(r.delta, 6) for r in comp.itertuples()}
    assert got == {("anomalyclip", 0): -1.0, ("anomalyclip", 1): -2.0}


def test_reported_rows_in_the_table_are_not_ranked(with_random):
    res, rep = with_random
    t = add_reported(leaderboard_table(res, ["image_auroc"]), reported_comparison(res, rep))
    labels = [(r.label, r.kind) for r in t.rows]
    assert labels == [
        ("A", "ours"),
        ("A (AdaCLIP T1 p.9)", "reported"),
        ("Δ A vs AdaCLIP T1 p.9", "delta"),
        ("R", "ours"),
    ]
    assert t.value("A (AdaCLIP T1 p.9)", "d_1", "image_auroc") == pytest.approx(84.0)
    md = to_markdown(t)
    assert "| Δ A vs AdaCLIP T1 p.9 | +1.0 |" in md
    assert "| A (AdaCLIP T1 p.9)† | 84.0 |" in md  # not bold although it beats R
    _check_latex_shape(to_latex(t), 1 + 2)  # d_1 and Rank


def test_missing_reported_file_is_tolerated(tmp_path):
    assert load_reported(tmp_path / "nope.csv").empty
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing columns"):
        load_reported(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------- the command
def test_leaderboard_command_writes_every_table(with_random, tmp_path, capsys):
    assert command.main([str(tmp_path / "res")]) == 0
    out = tmp_path / "res" / "leaderboard"
    for name in ("leaderboard", "domains", "per_category/d_1"):
        for suffix in (".csv", ".md", ".tex"):
            assert (out / f"{name}{suffix}").is_file()
    assert (out / "reported_comparison.csv").is_file()  # found next to the results folder
    printed = capsys.readouterr().out
    assert "| A | **85.0** | **1.0** |" in printed
    assert "Δ A vs AdaCLIP" in printed


def test_leaderboard_command_on_an_empty_folder(tmp_path, capsys):
    assert command.main([str(tmp_path)]) == 1
    assert command.main([str(tmp_path / "missing")]) == 1
    assert "metrics.json" in capsys.readouterr().err


def test_leaderboard_command_filters_reported_sources(with_random, tmp_path):
    assert command.main([str(tmp_path / "res"), "--quiet", "--sources", "Other", "--out", str(tmp_path / "o")]) == 0
    assert not (tmp_path / "o" / "reported_comparison.csv").exists()
    assert "Δ" not in (tmp_path / "o" / "leaderboard.md").read_text()
