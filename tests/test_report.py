"""The run report: what the notebooks skipped or adjusted, recorded once, printed, and shown in index.html."""

from __future__ import annotations

import re

import pandas as pd

from vclib import report


def _table(skipped=(), notes=()):
    table = pd.DataFrame({"x": [1]})
    table.attrs.update(skipped=list(skipped), notes=list(notes))
    return table


def test_record_keeps_skips_and_notes_once_and_says_them(tmp_path, capsys):
    first = _table([{"analysis": "split combinations", "reason": "no doubles"}],
                   [{"analysis": "split unseen_perturbation", "reason": "5 folds reduced to 2"}])
    new = report.record(tmp_path, "02", first)
    assert new[["kind", "analysis"]].values.tolist() == [["skipped", "split combinations"],
                                                         ["note", "split unseen_perturbation"]]
    out = capsys.readouterr().out
    assert "Skipped: split combinations: no doubles." in out and "Note: split unseen_perturbation" in out
    again = report.record(tmp_path, "02", first, {"analysis": "hit-rate curves", "reason": "no hits"}, quiet=True)
    assert len(again) == 3
    stored = report.skipped(tmp_path)
    assert len(stored) == 3  # the two entries recorded before are not repeated
    assert stored["kind"].tolist() == ["skipped", "note", "skipped"]


def test_nothing_skipped_is_said(tmp_path, capsys):
    report.record(tmp_path, "03", _table(notes=[{"analysis": "a", "reason": "b"}]))
    assert "Nothing skipped" in capsys.readouterr().out


def test_index_lists_every_entry_by_notebook(tmp_path):
    report.record(tmp_path, "02", _table([{"analysis": "split <x>", "reason": "r & s"}]), quiet=True)
    report.record(tmp_path, "03", _table(notes=[{"analysis": "mode collapse", "reason": "one per fold"}]), quiet=True)
    page = report.write_index(tmp_path, []).read_text()
    assert "<h3>Notebook 02</h3>" in page and "split &lt;x&gt;</b>: r &amp; s" in page
    assert "<i>note</i> · <b>mode collapse</b>: one per fold" in page


def test_an_older_skipped_file_without_kinds_still_reads(tmp_path):
    pd.DataFrame({"notebook": ["02"], "analysis": ["a"], "reason": ["b"]}).to_csv(tmp_path / report.SKIPPED_FILE,
                                                                                  index=False)
    assert report.skipped(tmp_path)["kind"].tolist() == ["skipped"]


def test_index_key_figures_fit_the_page_with_readable_headers(tmp_path):
    best = pd.DataFrame({
        "split": ["unseen_context", "unseen_context", "combinations"],
        "metric": ["pearson_delta", "mse_delta", "pearson_delta"], "best_model": ["mlp", "additive", "additive"],
        "best_mean": [0.423, 0.0878, -0.00001], "n": [226, 226, 27], "best_baseline": ["perturbation_mean"] * 3,
        "baseline_mean": [0.368, 0.09, 0.1], "ceiling": [0.572, 0.0134, 0.749],
        "beats_best_baseline": ["yes", "a baseline is best", "a baseline is best"], "difference": [0.05, 0, 0],
        "ci_low": [0.01, None, None], "ci_high": [0.09, None, None], "calibrated": [0.273, None, None],
        "calibration_note": ["", "", ""], "note": ["", "", ""], "best_learned": ["mlp"] * 3,
        "learned_mean": [0.423, 0.108, 0.325], "learned_vs_baseline": ["yes", "no", "no"],
        "learned_calibrated": [0.273, -0.276, -0.887], "learned_calibration_note": ["", "", ""]})
    best.to_csv(tmp_path / "benchmark_best.csv", index=False)
    page = report.write_index(tmp_path, []).read_text()
    table = page[page.index('class="dataframe figures"'):]
    table = table[: table.index("</table>")]
    headers = re.findall(r"<th>(.*?)</th>", table)
    assert 8 <= len(headers) <= 11 and not any("_" in h for h in headers)  # words, not column names
    assert "<td>mlp 0.423</td>" in table and "<td>pearson_delta (n = 226)</td>" in table
    assert table.count("<td>unseen_context</td>") == 1  # the split named once per group
    assert not re.search(r">-?0\.0+<|-0<", table) and "<td>additive -1.0e-05</td>" in table  # small, not "-0.000"
