"""bench/learning.py's report: figures -> CSV, plot and the table inside docs/learning.md."""

from __future__ import annotations

from pathlib import Path

from bench.learning import RESULTS_BEGIN, RESULTS_END, RoundFigures, read_csv, write_outputs


def test_the_results_go_between_the_markers_and_round_trip_through_the_csv(tmp_path: Path) -> None:
    page = tmp_path / "learning.md"
    page.write_text(f"# Learning\n\nmethod\n\n{RESULTS_BEGIN}\nold\n{RESULTS_END}\n\n## Discussion\nkept\n")
    figures = [
        RoundFigures("concise", 0, "v0", 0.11, 0.05, 32, None, None, None, 0.0, None, "-", "-", True),
        RoundFigures("concise", 1, "v1", 0.35, 0.06, 32, 0.62, 0.45, 0.77, 0.8, 0.81, "pass (0.66-0.91, n=40)",
                     "pass", True, {"sft": 80.0, "rm": 300.0, "ppo": 240.0}, 700.0, "note <x>"),
    ]
    write_outputs(figures, page, "header line")
    text = page.read_text()
    assert text.startswith("# Learning\n\nmethod") and text.rstrip().endswith("## Discussion\nkept")
    assert "old" not in text and "header line" in text
    assert "| concise | 1 | v1 | 0.350 ± 0.060 | 0.62 [0.45, 0.77] | 0.80 | 0.81 | pass (0.66-0.91, n=40) | pass | 80/300/240 | 700 |" in text
    assert read_csv(page.with_suffix(".csv")) == figures
    assert page.with_suffix(".png").is_file()
