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


def test_the_conversation_scenario_measures_the_frozen_second_turn_contexts() -> None:
    from types import SimpleNamespace

    from bench.learning import SCENARIOS, conversation_figures, frozen_contexts

    sc = SCENARIOS["conversation"]
    assert (sc.kind, sc.max_turns, sc.branching, sc.config) == ("conversation", 2, 1, {})
    ctx = SimpleNamespace
    # 1, 2: seeds (2 validation); 3, 4: turn 2 (4 validation); 5: a validation turn-2 context made later
    contexts = {1: ctx(turn=1), 2: ctx(turn=1), 3: ctx(turn=2), 4: ctx(turn=2)}
    frozen = frozen_contexts(contexts, validation={2, 4, 5}, turn=2)
    assert frozen == {4}
    samples = {  # policy id -> {prompt id: samples}
        10: {2: [{"prompt": "q", "text": "no"}], 4: [{"prompt": "q\nWhy?", "text": "no"}],
             5: [{"prompt": "q\nWhy?", "text": "A finished answer of about eight words here."}]},
        11: {2: [{"prompt": "q", "text": "no"}],
             4: [{"prompt": "q\nWhy?", "text": "A finished answer of about eight words here."}]},
    }
    rows = [SimpleNamespace(policy_id=10, policy_version=0, kl_from_v0=0.0, note=""),
            SimpleNamespace(policy_id=11, policy_version=1, kl_from_v0=0.5, note="")]
    runs = [{"metrics": {"deployed": True}, "policy_id": 11}]
    figures = conversation_figures(sc, rows, lambda pid: samples[pid], runs, contexts, frozen)
    turn2 = [f for f in figures if f.scenario == "conversation turn 2"]
    turn1 = [f for f in figures if f.scenario == "conversation turn 1"]
    assert [f.completions for f in turn2] == [1, 1]  # context 5 (made after round 0) is not measured
    assert turn2[1].score > turn2[0].score and turn2[1].win_vs_v0 == 1.0
    assert [f.score for f in turn1] == [turn1[0].score] * 2 and [f.policy for f in turn1] == ["v0", "v1"]
