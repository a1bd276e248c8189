"""The labeler's pages in a real browser: rank by drag and drop and by keyboard, write a
demonstration, undo, a failed submit that keeps the input, escaping, phone width."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from app.models import Demonstration, Prompt, Ranking, Task
from app.models.base import utcnow
from tests.browser.conftest import browser_login, screenshot
from tests.factories import make_completions, make_prompt_set, make_prompts, ready_set

GUIDELINES = "## How to rank\n\n* Prefer **helpful**, honest answers.\n* Ties are fine when two are equally good."


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """A full-page screenshot from the top, after card animations have settled."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    screenshot(page, name)


def _ids(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all("#cards > li", "els => els.map(e => e.dataset.id)")


def _wait_for_cards(page) -> list[str]:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#cards > li")
    page.wait_for_function("document.activeElement && document.activeElement.classList.contains('comp-card')")
    return _ids(page)


def _wait_for_new_task(page, old: list[str]) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(
        "old => { const c = document.querySelector('#cards > li'); return c && !old.includes(c.dataset.id); }",
        arg=old,
    )


def _rankings(database) -> list[Ranking]:  # type: ignore[no-untyped-def]
    with database.session() as db:
        return list(db.scalars(select(Ranking).order_by(Ranking.id)))


def test_home_then_rank_by_drag_and_drop_submit_see_next_and_undo(page, live_server, labeler, database) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "Helpful assistant", n_prompts=2, k=4, guidelines=GUIDELINES)
        ps.description = "General instructions"
        set_id = ps.id
    browser_login(page, live_server, labeler.username)
    assert page.url.endswith("/label")
    card = page.locator(f".set-card[data-set-id='{set_id}']")
    assert "Helpful assistant" in card.inner_text() and "2 left" in card.inner_text()
    _shot(page, "label-home")
    card.locator("a", has_text="Rank").click()
    first_ids = _wait_for_cards(page)
    assert page.locator("#lease").inner_text().startswith("Lease 29:") or "30:00" in page.locator("#lease").inner_text()

    cards = page.locator("#cards > li")
    dragged = first_ids[3]
    cards.nth(3).locator(".letter").drag_to(cards.nth(0).locator(".letter"))
    assert _ids(page)[0] == dragged, "drag and drop did not move the card to the top"
    assert cards.nth(0).locator(".rank-badge").inner_text() == "1"
    cards.nth(0).locator(".likert-btn[data-value='6']").click()
    cards.nth(3).locator(".flag", has_text="Made-up facts").click()
    page.fill("#comment", "D is the clearest")
    order = _ids(page)
    _shot(page, "label-rank-desktop")
    page.click(".submit-btn")
    _wait_for_new_task(page, first_ids)
    assert page.locator("#toast").is_visible() and "Undo" in page.locator("#toast").inner_text()
    rows = _rankings(database)
    assert len(rows) == 1
    assert rows[0].ranking == [[int(i)] for i in order]
    assert rows[0].ratings[dragged] == {"likert": 6, "flags": []}
    assert rows[0].ratings[order[3]] == {"likert": None, "flags": ["made_up_facts"]}
    assert rows[0].comment == "D is the clearest" and rows[0].time_spent_s is not None
    _shot(page, "label-rank-next-task")

    # undo brings the first task back with what was entered, and it can be redone
    page.click("#toast .undo-btn")
    page.wait_for_function("ids => document.querySelector('#cards > li').dataset.id === ids[0]", arg=order)
    assert _ids(page) == order
    assert page.locator("#comment").input_value() == "D is the clearest"
    assert _rankings(database) == []
    assert page.locator("#cards > li").nth(0).locator(".tie-btn").is_disabled()  # nothing above the top card
    page.locator("#cards > li").nth(1).locator(".tie-btn").click()  # tie the top two
    page.click(".submit-btn")
    _wait_for_new_task(page, order)
    rows = _rankings(database)
    assert len(rows) == 1 and rows[0].ranking[0] == sorted([int(order[0]), int(order[1])])


def test_rank_with_the_keyboard_alone(page, live_server, labeler, database) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "keys", n_prompts=2, k=4)
        set_id = ps.id
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/{set_id}/rank")
    a, b, c, d = _wait_for_cards(page)
    kb = page.keyboard
    kb.press("4")  # the focused first card (a) goes to position 4: b c d a
    kb.press("k")  # focus d
    kb.press("Alt+ArrowUp")  # d moves up: b d c a
    kb.press("j")  # focus c
    kb.press("t")  # tie c with d
    kb.press("Shift+Digit7")  # c gets Likert 7
    kb.press("?")
    assert page.locator("#keys-help").is_visible()
    _shot(page, "label-rank-keyboard")
    kb.press("?")
    assert _ids(page) == [b, d, c, a]
    assert page.locator("#cards > li").nth(2).locator(".rank-badge").inner_text() == "2"
    kb.press("Control+Enter")
    _wait_for_new_task(page, [a, b, c, d])
    (row,) = _rankings(database)
    assert row.ranking == [[int(b)], sorted([int(c), int(d)]), [int(a)]]
    assert row.ratings == {c: {"likert": 7, "flags": []}}


def test_write_a_demonstration_then_the_empty_state(page, live_server, labeler, database) -> None:
    with database.session() as db:
        ps = make_prompt_set(db, "demos", k=4, demonstration_share=1.0, guidelines=GUIDELINES)
        make_prompts(db, ps, ["Write a haiku about databases."], wants_demonstration=True)
        set_id = ps.id
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/{set_id}/demonstrate")
    page.wait_for_selector("#demo-text")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'demo-text'")
    haiku = "Rows in quiet rows\nindexes hum in the dark\ncommit, and then rest"
    page.keyboard.type(haiku)
    assert page.locator("#char-count").inner_text() == f"{len(haiku)} / 20,000"
    _shot(page, "label-demonstrate")
    page.click(".submit-btn")
    page.wait_for_selector("#empty-state")
    assert "Nothing left" in page.locator("#empty-state").inner_text()
    with database.session() as db:
        (demo,) = db.scalars(select(Demonstration)).all()
        assert demo.text.startswith("Rows in quiet rows\nindexes")
    _shot(page, "label-empty-state")
    page.click("#toast .undo-btn")
    page.wait_for_selector("#demo-text")
    assert page.locator("#demo-text").input_value().startswith("Rows in quiet rows")
    page.fill("#demo-text", "A better haiku\nabout rows and commits\nand the WAL file")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#empty-state")
    with database.session() as db:
        assert db.scalars(select(Demonstration.text)).all() == ["A better haiku\nabout rows and commits\nand the WAL file"]


def test_a_failed_submit_shows_the_error_and_keeps_the_input(
    page, live_server, labeler, make_account, database
) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "contested", n_prompts=1, k=3, overlap=1)
        set_id = ps.id
    other = make_account()
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/{set_id}/rank")
    a, b, c = _wait_for_cards(page)
    page.keyboard.press("3")  # b c a
    cards = page.locator("#cards > li")
    cards.nth(0).locator(".likert-btn[data-value='5']").click()
    cards.nth(2).locator(".flag", has_text="Harmful").click()
    page.fill("#comment", "keep me")
    page.check("#all-unacceptable")
    # meanwhile the lease runs out and another labeler takes the only slot
    with database.session() as db:
        db.execute(update(Task).values(lease_expires_at=utcnow() - timedelta(seconds=5)))
    r = httpx.post(
        f"{live_server}/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": "rank"}, headers=other.headers
    )
    assert r.status_code == 200
    page.click(".submit-btn")
    error = page.locator(".submit-error")
    error.wait_for(state="visible")
    assert "another labeler has taken its slot" in error.inner_text()
    assert error.locator("button", has_text="Get a new task").is_visible()
    assert _ids(page) == [b, c, a]
    assert cards.nth(0).locator(".likert-btn[data-value='5']").get_attribute("aria-pressed") == "true"
    assert cards.nth(2).locator(".flag input").first.is_checked() is False
    assert cards.nth(2).locator(".flag", has_text="Harmful").locator("input").is_checked()
    assert page.locator("#comment").input_value() == "keep me" and page.is_checked("#all-unacceptable")
    assert page.locator(".submit-btn").is_enabled()
    _shot(page, "label-submit-error")
    assert _rankings(database) == []


def test_a_prompt_holding_script_is_shown_as_text(page, live_server, labeler, database) -> None:
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> **not bold**'
    with database.session() as db:
        ps = make_prompt_set(db, "escaping", k=2, guidelines="<script>window.__pwned = 3</script> plain *md*")
        (prompt,) = make_prompts(db, ps, [evil])
        from tests.factories import make_policy

        make_completions(db, prompt, make_policy(db), 2, texts=["<b>not bold</b>", "```html\n<script>x()</script>\n```"])
        set_id = ps.id
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/{set_id}/rank")
    _wait_for_cards(page)
    assert page.evaluate("window.__pwned") is None
    assert page.locator(".prompt-text").inner_text().strip() == evil
    assert page.locator("#task-area script, #task-area img, #task-area b, .guidelines-body script").count() == 0
    texts = page.locator(".comp-text").all_inner_texts()
    assert any("<b>not bold</b>" in t for t in texts) and any("<script>x()</script>" in t for t in texts)
    page.click(".guidelines summary")
    assert "<script>" in page.locator(".guidelines-body").inner_text()
    _shot(page, "label-escaping")


def test_ranking_at_phone_width_with_the_arrow_buttons(page, live_server, labeler, database) -> None:
    long_text = "A long answer.\n\n" + "\n".join(f"Step {i}: do the next thing carefully." for i in range(40))
    messages = [
        {"role": "user", "content": "I need help planning a trip."},
        {"role": "assistant", "content": "Sure, where to?"},
        {"role": "user", "content": "Lisbon, three days, on foot. Make a plan."},
    ]
    with database.session() as db:
        ps = make_prompt_set(db, "phone", k=3, guidelines=GUIDELINES)
        prompt = Prompt(prompt_set_id=ps.id, messages=messages, content_hash="phone-chat")
        db.add(prompt)
        db.flush()
        from tests.factories import make_policy

        make_completions(db, prompt, make_policy(db), 3, texts=[long_text, "Day 1: Alfama.", "Go by car."])
        set_id = ps.id
    page.set_viewport_size({"width": 390, "height": 844})
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/{set_id}/rank")
    ids = _wait_for_cards(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert "Sure, where to?" in page.locator(".turns").inner_text()
    long_card = page.locator("#cards > li", has=page.locator(".comp-text", has_text="Step 39"))
    expand = long_card.locator(".expand-btn")
    assert expand.is_visible()
    height = long_card.bounding_box()["height"]
    expand.click()
    assert long_card.bounding_box()["height"] > height + 100
    page.locator("#cards > li").nth(2).locator(".move-btn.up").click()
    assert _ids(page) == [ids[0], ids[2], ids[1]]
    _shot(page, "label-rank-phone")
    page.click(".submit-btn")
    page.wait_for_selector("#empty-state")
    assert _rankings(database)[0].ranking == [[int(ids[0])], [int(ids[2])], [int(ids[1])]]
    _shot(page, "label-empty-phone")


@pytest.mark.parametrize("status", ["paused"])
def test_a_paused_set_says_so(page, live_server, labeler, database, status) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "resting", n_prompts=1, k=2)
        ps.status = status
        set_id = ps.id
    browser_login(page, live_server, labeler.username)
    assert page.locator(f".set-card[data-set-id='{set_id}']").count() == 0
    page.goto(f"{live_server}/label/{set_id}/rank")
    assert "This set is paused" in page.locator("#set-inactive").inner_text()


def test_the_ranking_state_drives_the_cards_and_the_submission(page, live_server, labeler, database) -> None:
    """static/label/: the cards render from one state object. Keys change the state, a reload
    restores it from the draft, cards tampered with are redrawn from it on the next change,
    and the submitted body is built from it, not read back from the cards."""
    with database.session() as db:
        ps, _, _ = ready_set(db, "state", n_prompts=2, k=4)
        set_id = ps.id
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))  # an uncaught exception in a module
    page.on("response", lambda r: errors.append(r.url) if r.status >= 400 and "/static/" in r.url else None)
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/{set_id}/rank")
    a, b, c, d = _wait_for_cards(page)
    kb = page.keyboard
    kb.press("3")  # a to position 3: b c a d
    kb.press("j")  # focus d
    kb.press("1")  # d to the top: d b c a
    kb.press("j")  # focus b
    kb.press("=")  # tie b with d: [d b] c a
    kb.press("Shift+Digit2")  # b: Likert 2
    cards = page.locator("#cards > li")
    cards.nth(3).locator(".flag", has_text="Made-up facts").click()  # a: flagged

    def drawn() -> list[list]:  # per card, top to bottom: id, rank badge, Likert pressed, flags checked
        return page.eval_on_selector_all(
            "#cards > li",
            """els => els.map((li) => [
              li.dataset.id,
              li.querySelector('.rank-badge').textContent,
              li.querySelector(".likert-btn[aria-pressed='true']")?.dataset.value ?? null,
              [...li.querySelectorAll('.flags input:checked')].map((i) => i.name),
            ])""",
        )

    expected = [[d, "1", None, []], [b, "1", "2", []], [c, "2", None, []], [a, "3", None, ["made_up_facts"]]]
    assert drawn() == expected
    assert cards.nth(1).locator(".tie-btn").get_attribute("aria-pressed") == "true"

    page.reload()  # the same task comes back, drawn from the draft
    assert _wait_for_cards(page) == [d, b, c, a]
    assert drawn() == expected

    # Scramble the cards behind the state's back: order, data attributes, checkboxes.
    page.evaluate(
        """() => {
          const list = document.getElementById('cards');
          [...list.children].reverse().forEach((li) => list.append(li));
          list.querySelectorAll('li').forEach((li) => { li.dataset.tie = '1'; li.dataset.likert = '7'; });
          list.querySelectorAll('.flags input').forEach((i) => { i.checked = true; });
        }"""
    )
    assert _ids(page) == [a, c, b, d]
    page.locator(f"#cards > li[data-id='{c}']").focus()
    kb.press("Shift+Digit5")  # c: Likert 5, and the next render puts everything back
    expected[2][2] = "5"
    assert drawn() == expected

    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/ranking")) as sent:
        kb.press("Control+Enter")
    body = sent.value.post_data_json
    assert body["ranking"] == [[int(d), int(b)], [int(c)], [int(a)]]
    assert body["ratings"] == {
        b: {"likert": 2, "flags": []},
        c: {"likert": 5, "flags": []},
        a: {"likert": None, "flags": ["made_up_facts"]},
    }
    assert body["all_unacceptable"] is False and body["comment"] == "" and body["time_spent_s"] >= 0
    _wait_for_new_task(page, [a, b, c, d])
    (row,) = _rankings(database)
    assert row.ranking == [sorted([int(d), int(b)]), [int(c)], [int(a)]]
    assert errors == []


def test_the_ranking_model_is_plain_functions_over_one_state(page, live_server) -> None:
    """static/label/ranking.js works without a DOM: moves keep the group a card leaves and
    split the one it lands in, ties and ratings toggle, states are never mutated, and a
    saved answer is checked before it is restored."""
    page.goto(f"{live_server}/login")
    got = page.evaluate(
        """async () => {
          const R = await import('/static/label/ranking.js');
          const s = R.toggleTie(R.toggleTie(R.initial([1, 2, 3, 4, 5]), 2), 3);  // [1 2 3] 4 5
          const rated = R.rate(R.rate(s, 4, 6), 4, 6);
          return {
            tied: R.groups(s),
            leaveHead: R.groups(R.move(s, 1, 4)),
            leaveMiddle: R.groups(R.move(s, 2, 4)),
            split: R.groups(R.move(s, 5, 1)),
            topTie: R.toggleTie(s, 1) === s,
            untouched: R.groups(s),
            cleared: rated.ratings,
            restored: R.toAnswer(R.fromAnswer([1, 2, 3, 4, 5], {
              ranking: [[9], [1, 2, 3, 4, 5]],
              ratings: { 2: { likert: 9, flags: ['x', 'harm'] }, 7: { likert: 3, flags: [] } },
              all_unacceptable: true,
            }, ['harm']), ['harm']),
            roundTrip: R.toAnswer(R.fromAnswer([1, 2, 3], {
              ranking: [[3], [1, 2]], ratings: { 1: { likert: 4, flags: [] } },
            }, [])),
          };
        }"""
    )
    assert got["tied"] == [[1, 2, 3], [4], [5]]
    assert got["leaveHead"] == [[2, 3], [4], [5], [1]]
    assert got["leaveMiddle"] == [[1, 3], [4], [5], [2]]
    assert got["split"] == [[1], [5], [2, 3], [4]]
    assert got["topTie"] is True and got["untouched"] == [[1, 2, 3], [4], [5]]
    assert got["cleared"] == {}
    assert got["restored"] == {
        "ranking": [[1], [2], [3], [4], [5]],
        "ratings": {"2": {"likert": None, "flags": ["harm"]}},
        "all_unacceptable": True,
        "comment": "",
    }
    assert got["roundTrip"] == {
        "ranking": [[3], [1, 2]],
        "ratings": {"1": {"likert": 4, "flags": []}},
        "all_unacceptable": False,
        "comment": "",
    }


def test_a_demonstration_draft_survives_a_reload(page, live_server, labeler, database) -> None:
    with database.session() as db:
        ps = make_prompt_set(db, "demo drafts", k=2, demonstration_share=1.0)
        make_prompts(db, ps, ["Explain WAL in one line."], wants_demonstration=True)
        set_id = ps.id
    browser_login(page, live_server, labeler.username)
    page.goto(f"{live_server}/label/{set_id}/demonstrate")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'demo-text'")
    page.keyboard.type("Write ahead, then apply.")
    page.reload()
    page.wait_for_selector("#demo-text")
    assert page.locator("#demo-text").input_value() == "Write ahead, then apply."
    assert page.locator("#char-count").inner_text() == "24 / 20,000"
    page.fill("#demo-text", "   ")
    page.click(".submit-btn")
    assert "empty" in page.locator(".submit-error").inner_text()
    with database.session() as db:
        assert db.scalars(select(Demonstration)).all() == []
