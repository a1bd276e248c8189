"""bench/learning.py's report: figures -> CSV, plot and the table inside docs/learning.md."""

from __future__ import annotations

from pathlib import Path

from bench.learning import (
    EVAL_BEGIN,
    RESULTS_BEGIN,
    RESULTS_END,
    EvaluationFigures,
    RoundFigures,
    read_csv,
    write_evaluations,
    write_outputs,
)


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


def test_the_evaluation_table_has_its_own_markers_and_keeps_the_results(tmp_path: Path) -> None:
    page = tmp_path / "learning.md"
    page.write_text(f"# Learning\n\n{RESULTS_BEGIN}\nrounds\n{RESULTS_END}\n")
    ev = EvaluationFigures("concise", ["v0", "v2"], 32, {"v0": (950.0, 900.0, 990.0), "v2": (1050.0, 1010.0, 1100.0)},
                           0.72, 0.55, 0.84, {"v0": 0.12, "v2": 0.61}, True)
    write_evaluations([ev], page, "first")
    write_evaluations([ev], page, "second")  # replaced in place, not appended twice
    text = page.read_text()
    assert text.count(EVAL_BEGIN) == 1 and "first" not in text and "second" in text and "rounds" in text
    assert ("| concise | v0 vs v2 | 32 | v0 950 [900, 990]; v2 1050 [1010, 1100] | 0.72 [0.55, 0.84] | "
            "v0 0.120; v2 0.610 | yes |") in text
