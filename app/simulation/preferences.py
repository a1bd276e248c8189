"""Scripted preferences: transparent scoring functions over a completion's text.

A preference is any callable ``(prompt: str, completion: str) -> float``; higher is
better. Built-ins are looked up by name, anything else by a dotted path
(``package.module:function`` or ``package.module.function``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

Preference = Callable[[str, str], float]

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
STOPWORDS = frozenset(
    """a an and are as at be by can do does for from give how i in is it me my of on or
    our should that the this to was what when which who why will with write you your
    about into than then there these those their them they short some each under
    following sentence paragraph""".split()
)


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 = no repetition)."""
    words = _words(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def concise(prompt: str, completion: str) -> float:
    """Concise, complete sentences, no repetition.

    +1 for ending a sentence (., !, ?, or a closing code fence), +0.25 for starting with a
    capital letter, minus 3 x the share of repeated word trigrams, minus 0.01 per word (of
    two answers alike in every other way the shorter wins, so rankings rarely tie), and a
    steeper length penalty outside 8-60 words (1 point per 40 words past 60, 1 per 8 words
    below 8). Best possible: 1.17 (a finished, capitalised 8-word answer).
    """
    text = completion.strip()
    if not text:
        return -2.0
    n = len(_words(text))
    score = 0.0
    score += 1.0 if re.search(r"([.!?]|```)[\"')\]]*$", text) else 0.0
    score += 0.25 if text[0].isupper() else 0.0
    score -= 3.0 * repetition(text)
    score -= 0.01 * n
    if n > 60:
        score -= (n - 60) / 40
    elif n < 8:
        score -= (8 - n) / 8
    return score


def key_terms(prompt: str, k: int = 3) -> list[str]:
    """The prompt's key terms: its longest content words (ties keep prompt order)."""
    seen: list[str] = []
    for w in _words(prompt):
        if len(w) >= 4 and w not in STOPWORDS and w not in seen:
            seen.append(w)
    return sorted(seen, key=len, reverse=True)[:k]


def key_term(prompt: str, completion: str) -> float:
    """Mentions the key term of the prompt.

    +1 when the completion mentions the prompt's longest content word, +1 x the share of
    its top three key terms mentioned, minus a small penalty past 120 words.
    """
    terms = key_terms(prompt)
    if not terms:
        return 0.0
    words = set(_words(completion))
    score = (1.0 if terms[0] in words else 0.0) + sum(t in words for t in terms) / len(terms)
    n = len(_words(completion))
    if n > 120:
        score -= (n - 120) / 60
    return score


BUILTIN: dict[str, Preference] = {"concise": concise, "key_term": key_term}


def load_preference(name: str) -> Preference:
    """A built-in preference by name, or a callable by dotted path."""
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"unknown preference {name!r}: use one of {sorted(BUILTIN)} or module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load preference {name!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"preference {name!r} is not callable")
    return fn


def rank_by_preference(
    preference: Preference, prompt: str, completions: list[tuple[int, str]]
) -> list[list[int]]:
    """Best-first groups of completion ids; equal scores form a tie group."""
    scored = sorted(((preference(prompt, text), cid) for cid, text in completions), key=lambda x: -x[0])
    groups: list[list[int]] = []
    last: float | None = None
    for score, cid in scored:
        if last is not None and abs(score - last) < 1e-9:
            groups[-1].append(cid)
        else:
            groups.append([cid])
        last = score
    return groups
