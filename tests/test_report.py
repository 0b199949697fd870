"""The run report: what the notebooks skipped or adjusted, recorded once, printed, and shown in index.html."""

from __future__ import annotations

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
