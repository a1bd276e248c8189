"""The evaluation pages in a real browser: the blind compare page by keyboard (wide and at
phone width) and the admin leaderboard page."""

from __future__ import annotations

import re

from sqlalchemy import select

from app.models import ComparisonJudgment, Policy, User
from app.services import compare_tasks, evaluations, tasks
from tests.browser.conftest import browser_login, screenshot
from tests.eval_helpers import eval_setup


def _evaluation(database, n_prompts: int = 2, name: str = "v1 vs v0") -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=n_prompts)
        ev = evaluations.create_evaluation(
            db, None, name=name, policy_ids=setup.policy_ids, prompt_set_ids=[setup.prompt_set_id],
            guidelines="Prefer the **more helpful** answer.",
        )
        return ev.id, setup.policy_ids


def _prompt(page) -> str:  # type: ignore[no-untyped-def]
    return page.locator(".prompt-text").inner_text()


def test_compare_with_the_keyboard_alone(page, live_server, labeler, database) -> None:  # type: ignore[no-untyped-def]
    ev_id, policy_ids = _evaluation(database)
    with database.session() as db:
        versions = [db.get(Policy, p).version for p in policy_ids]
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/evaluations/{ev_id}/compare")
    page.wait_for_selector(".compare-card[data-side=b]")
    first_prompt = _prompt(page)
    html = page.content()
    assert "v1 vs v0" not in html and "policy" not in html.lower()
    for v in versions:
        assert not re.search(rf"\bv{v}\b", html)
    # side by side on a wide screen
    a_box = page.locator(".compare-card[data-side=a]").bounding_box()
    b_box = page.locator(".compare-card[data-side=b]").bounding_box()
    assert abs(a_box["y"] - b_box["y"]) < 2 and b_box["x"] > a_box["x"] + a_box["width"] - 1
    kb = page.keyboard
    kb.press("Control+Enter")  # nothing chosen yet: refused with a message
    page.wait_for_selector(".submit-error:not([hidden])")
    assert "Choose" in page.locator(".submit-error").inner_text()
    kb.press("b")
    kb.press("6")  # A gets 6
    kb.press("Shift+Digit2")  # B gets 2
    assert page.locator(".choice-btn[data-choice=b]").get_attribute("aria-pressed") == "true"
    assert page.locator(".compare-card[data-side=b]").get_attribute("class").find("preferred") >= 0
    screenshot(page, "label-compare-wide")
    kb.press("Control+Enter")
    page.wait_for_function("old => { const p = document.querySelector('.prompt-text'); return p && p.innerText !== old; }", arg=first_prompt)
    with database.session() as db:
        (row,) = db.scalars(select(ComparisonJudgment)).all()
        assert row.choice == "b"
        assert row.ratings == {"a": {"likert": 6, "flags": []}, "b": {"likert": 2, "flags": []}}
    # stacked at phone width
    page.set_viewport_size({"width": 390, "height": 844})
    a_box = page.locator(".compare-card[data-side=a]").bounding_box()
    b_box = page.locator(".compare-card[data-side=b]").bounding_box()
    assert b_box["y"] >= a_box["y"] + a_box["height"] - 1
    screenshot(page, "label-compare-phone")
    kb.press("x")
    kb.press("Control+Enter")
    page.wait_for_selector("#empty-state")
    with database.session() as db:
        assert sorted(j.choice for j in db.scalars(select(ComparisonJudgment))) == ["b", "both_bad"]


def test_the_leaderboard_page(page, live_server, admin, make_account, database) -> None:  # type: ignore[no-untyped-def]
    ev_id, (old, new) = _evaluation(database, n_prompts=6, name="human eval")
    with database.session() as db:
        for i in range(2):
            account = make_account("labeler")
            user = db.get(User, account.id)
            while (t := tasks.transact(db, lambda: compare_tasks.next_task(db, user, ev_id, lease_minutes=5))) is not None:
                view = compare_tasks.task_view(db, t)
                new_side = "a" if "number 1" in view["sides"][0]["text"] else "b"
                task_id = t.id
                tasks.transact(db, lambda: compare_tasks.submit_comparison(db, task_id, user, choice=new_side))
    browser_login(page, live_server, admin.username)
    page.goto(f"{live_server}/admin/evaluations")
    page.wait_for_selector("#evaluations")
    assert "12 / 6" not in page.content()
    href = page.get_attribute("text=human eval", "href")
    assert href == f"/admin/evaluations/{ev_id}"
    page.goto(f"{live_server}{href}", timeout=30_000)
    page.wait_for_selector("#leaderboard")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 2
    with database.session() as db:
        new_version = db.get(Policy, new).version
    assert rows.nth(0).locator("td").nth(1).inner_text() == f"v{new_version}"
    assert "6 / 0 / 0 / 0" in rows.nth(0).inner_text()
    assert "separated" in page.locator("#adjacent").inner_text()
    screenshot(page, "admin-evaluation-leaderboard")
