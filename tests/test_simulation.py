"""Simulated labelers, the pure parts: preferences, ranking by a preference, labeler noise,
win rate, and the table / CSV the simulation writes. (The loop itself runs against a
live server in tests/test_e2e_loop.py.)"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from app.simulation.loop import RoundRow, _rm_accuracy, noisy, read_csv, table, win_rate, write_csv, write_plot
from app.simulation.preferences import (
    BUILTIN,
    concise,
    key_term,
    key_terms,
    load_preference,
    rank_by_preference,
    repetition,
)


def longest_words(prompt: str, completion: str) -> float:
    """A pluggable preference for the dotted-path test: longer words are better."""
    words = completion.split()
    return sum(map(len, words)) / len(words) if words else 0.0


# --- concise ----------------------------------------------------------------------------

GOOD = "The seasons come from the tilt of the Earth's axis, which changes how directly sunlight hits each hemisphere."


def test_concise_rewards_a_complete_capitalised_sentence_of_moderate_length() -> None:
    assert concise("What causes the seasons?", GOOD) == pytest.approx(1.25 - 0.01 * 18)  # 18 words


def test_concise_prefers_the_shorter_of_two_otherwise_equal_answers() -> None:
    shorter = "The seasons come from the tilt of the Earth's axis."
    assert concise("q", shorter) == pytest.approx(1.25 - 0.01 * 10)
    assert concise("q", shorter) > concise("q", GOOD)


def test_concise_penalises_a_cut_off_answer() -> None:
    cut = GOOD.rstrip(".") + " and so on in the"
    assert concise("q", cut) == pytest.approx(0.25 - 0.01 * 23)
    assert concise("q", cut) < concise("q", GOOD)


def test_concise_penalises_repetition() -> None:
    looped = "It is cold. " * 6
    assert repetition(looped) > 0.5
    assert concise("q", looped) < concise("q", GOOD) - 1.0


def test_concise_penalises_length_outside_8_to_60_words() -> None:
    short = "Tilt."
    long = " ".join("w" + "".join(chr(97 + int(d)) for d in str(i)) for i in range(100)) + "."  # 100 distinct words
    assert concise("q", short) == pytest.approx(1.25 - 0.01 - (8 - 1) / 8)
    assert concise("q", long) == pytest.approx(1.0 - 0.01 * 100 - (100 - 60) / 40)
    assert concise("q", "   ") == -2.0


def test_concise_counts_a_closing_code_fence_as_an_ending() -> None:
    code = "Here it is:\n```python\ndef f(n):\n    return 1 if n < 2 else n * f(n - 1)\n```"
    assert concise("q", code) == pytest.approx(1.25 - 0.01 * 14)


# --- key_term ---------------------------------------------------------------------------


def test_key_terms_are_the_longest_content_words_of_the_prompt() -> None:
    assert key_terms("What does a database index do, and when should I avoid one?") == ["database", "index", "avoid"]
    assert key_terms("Why is it so?") == []


def test_key_term_rewards_mentioning_the_prompt_terms() -> None:
    prompt = "How does a refrigerator keep food cold?"
    assert key_terms(prompt) == ["refrigerator", "keep", "food"]  # equal lengths keep prompt order
    assert key_term(prompt, "A refrigerator pumps heat out so the food stays cold; it can keep it fresh.") == 2.0
    assert key_term(prompt, "The fridge moves heat outside.") == 0.0
    assert key_term(prompt, "A refrigerator moves heat outside.") == pytest.approx(1 + 1 / 3)
    assert key_term("Why is it so?", "anything") == 0.0


def test_key_term_penalises_rambling() -> None:
    prompt = "How does a refrigerator keep food cold?"
    ramble = "The refrigerator keeps food cold. " + "blah " * 150
    assert key_term(prompt, ramble) < 2.0


# --- loading ----------------------------------------------------------------------------


def test_builtins_and_dotted_paths_load() -> None:
    assert set(BUILTIN) >= {"concise", "key_term"}
    assert load_preference("concise") is concise
    assert load_preference("tests.test_simulation:longest_words") is longest_words
    assert load_preference("tests.test_simulation.longest_words") is longest_words


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nonsense", "unknown preference"),
        ("tests.test_simulation:missing", "cannot load preference"),
        ("no_such_module_x:fn", "cannot load preference"),
        ("tests.test_simulation:GOOD", "is not callable"),
    ],
)
def test_bad_preferences_are_refused_with_a_reason(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_preference(name)


# --- ranking and noise ------------------------------------------------------------------


def test_rank_by_preference_is_best_first_with_ties_grouped() -> None:
    completions = [(11, "bb"), (12, "dddd"), (13, "a"), (14, "cc")]
    by_length = lambda _p, text: float(len(text))  # noqa: E731
    assert rank_by_preference(by_length, "p", completions) == [[12], [11, 14], [13]]


def test_rank_by_preference_with_concise_puts_the_finished_sentence_first() -> None:
    completions = [(1, GOOD.rstrip(".") + " and"), (2, GOOD), (3, "no no no no no no no no no no no")]
    assert rank_by_preference(concise, "q", completions)[0] == [2]


def test_no_noise_keeps_the_ranking() -> None:
    ranking = [[1], [2, 3], [4]]
    assert noisy(ranking, 0.0, random.Random(0)) == ranking


def test_certain_noise_walks_the_best_group_to_the_bottom() -> None:
    assert noisy([[1], [2], [3], [4]], 1.0, random.Random(0)) == [[2], [3], [4], [1]]


def test_noise_flips_about_the_given_share_of_adjacent_pairs_and_keeps_every_id() -> None:
    rng = random.Random(7)
    flipped_first = 0
    trials = 4000
    for _ in range(trials):
        out = noisy([[1], [2, 5], [3], [4]], 0.2, rng)
        assert sorted(i for g in out for i in g) == [1, 2, 3, 4, 5]
        flipped_first += out[0] != [1]
    assert flipped_first / trials == pytest.approx(0.2, abs=0.03)


# --- measuring and reporting -------------------------------------------------------------


def _rows(prompt_id: int, *texts: str) -> list[dict]:
    return [{"prompt_id": prompt_id, "prompt": "q", "text": t} for t in texts]


def test_win_rate_counts_pairs_per_prompt_with_ties_as_half() -> None:
    by_length = lambda _p, text: float(len(text))  # noqa: E731
    new = {1: _rows(1, "aaa", "a"), 2: _rows(2, "bb")}
    old = {1: _rows(1, "aa"), 2: _rows(2, "bb"), 3: _rows(3, "cccc")}
    # prompt 1: aaa beats aa, a loses; prompt 2: a tie; prompt 3 only in old: ignored.
    assert win_rate(by_length, new, old) == pytest.approx((1 + 0 + 0.5) / 3)
    assert win_rate(by_length, {}, old) is None


def test_rm_accuracy_is_the_held_out_accuracy_only() -> None:
    assert _rm_accuracy({"metrics": {"rm": {"val_accuracy": 0.75, "train_accuracy": 0.9}}}) == 0.75
    assert _rm_accuracy({"metrics": {"rm": {"train_accuracy": 0.9}}}) is None
    assert _rm_accuracy({"metrics": {"skipped": {"rm": "no rankings"}}}) is None


def test_table_and_csv(tmp_path: Path) -> None:
    rows = [
        RoundRow(0, 0, 1, 0.5, None, 0.0, None, 20, 8, mean_words=40.0),
        RoundRow(1, 1, 2, 0.75, 0.6, 0.01234, 0.625, 20, 2, mean_words=31.5, run_id=1, note="ok"),
    ]
    header, *body = table(rows)
    assert header[:6] == ["round", "policy", "score", "win vs prev", "KL from v0", "RM acc"]
    assert body[0][:6] == ["0", "v0", "0.500", "-", "0.000", "-"]
    assert body[1][:7] == ["1", "v1", "0.750", "0.600", "0.012", "0.625", "31.5"]
    path = write_csv(rows, tmp_path / "out" / "simulation.csv")
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert [r["policy_version"] for r in read] == ["0", "1"]
    assert read[1]["rm_accuracy"] == "0.625" and read[0]["win_rate_vs_prev"] == ""
    assert read_csv(path) == rows
    png = write_plot(rows, tmp_path / "plot.png", "concise")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
