"""The conversation pages in a real browser, by keyboard alone: rank the replies of a
conversation's second turn shown as a chat thread (earlier turns folded with h), then
continue the conversation from the reply ranked best; write the assistant's reply to a
conversation (a demonstrate task); start a conversation (a seed written by the labeler)."""

from __future__ import annotations

from sqlalchemy import select

from app.models import ConversationNode, Demonstration, Prompt, Ranking
from app.services import claims, continue_tasks, exports, imports, prompt_sets, submissions
from tests.browser.conftest import browser_login, screenshot
from tests.conversation_helpers import deploy_chat_policy, sample_replies
from tests.round_helpers import make_labeler


def _second_turn(database, settings, **set_fields) -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    """A conversation set whose seed was ranked and continued by two other labelers; the
    new context has two sampled replies. Returns (set id, the second turn's completion ids)."""
    deploy_chat_policy(database, settings.resolved_artifacts_dir)
    with database.session() as db:
        ps = prompt_sets.create_prompt_set(
            db, None, name="Trip planner", k=2, kind="conversation", conversation={"max_turns": 4},
            artifacts_dir=settings.resolved_artifacts_dir, **set_fields,
        )
        imports.import_rows(db, ps, imports.parse_items([{"prompt": "Plan a day in Lisbon."}]), validation_fraction=0)
        db.commit()
        set_id = ps.id
        seed = db.scalar(select(ConversationNode.prompt_id).where(ConversationNode.parent_id.is_(None)))
    first = sample_replies(database, seed, ["Visit Belém, then the Alfama.", "Stay in the hotel."])
    with database.session() as db:
        ranker, writer = make_labeler(db, "ranker"), make_labeler(db, "writer")
        task = claims.next_task(db, ranker, set_id, "rank", lease_minutes=30)
        submissions.submit_ranking(db, task.id, ranker, ranking=[[first[0]], [first[1]]])
        cont = claims.next_task(db, writer, set_id, "continue", lease_minutes=30)
        node, _ = continue_tasks.submit_continuation(db, cont.id, writer, text="Where should I eat?", max_chars=1000)
        db.commit()
        context = node.prompt_id
    return set_id, sample_replies(database, context, ["Try a tasca in the Alfama.", "Anywhere."])


def test_rank_a_conversation_turn_then_continue_from_the_best_reply(page, live_server, labeler, database, settings) -> None:
    set_id, second = _second_turn(database, settings)
    browser_login(page, live_server, labeler.username)
    card = page.locator(f".set-card[data-set-id='{set_id}']")
    assert "Continue conversations" in card.inner_text()
    page.goto(f"{live_server}/label/{set_id}/rank")
    page.wait_for_selector("#cards > li")
    page.wait_for_function("document.activeElement && document.activeElement.classList.contains('comp-card')")
    thread = page.locator(".thread")
    assert "turn 2 of 4" in thread.locator(".thread-head").text_content()
    earlier = page.locator(".thread-earlier")
    assert earlier.get_attribute("open") is not None
    assert "Plan a day in Lisbon." in earlier.inner_text() and "Visit Belém" in earlier.inner_text()
    assert "Where should I eat?" in page.locator(".thread-current").inner_text()
    kb = page.keyboard
    kb.press("h")  # fold the earlier turns
    assert earlier.get_attribute("open") is None
    kb.press("h")
    assert earlier.get_attribute("open") is not None
    screenshot(page, "label-conversation-rank")
    ids = page.eval_on_selector_all("#cards > li", "els => els.map(e => Number(e.dataset.id))")
    best = second[0]
    if ids[0] != best:
        kb.press("2")  # the focused first card goes to position 2: the best one is on top
    kb.press("Control+Enter")
    page.wait_for_selector("#empty-state")
    with database.session() as db:
        rows = db.scalars(select(Ranking).order_by(Ranking.id)).all()
        assert rows[-1].ranking == [[best], [second[1]]]

    page.goto(f"{live_server}/label/{set_id}/continue")
    page.wait_for_selector("#turn-text")
    current = page.locator(".thread-current")  # text_content: the label is uppercased by CSS
    assert "The reply you continue from" in current.text_content() and "Try a tasca in the Alfama." in current.text_content()
    assert "turn 3 of 4" in page.locator(".thread-head").text_content()
    page.wait_for_function("document.activeElement && document.activeElement.id === 'turn-text'")
    kb.type("Is it open on Mondays?")
    screenshot(page, "label-conversation-continue")
    kb.press("Control+Enter")
    page.wait_for_selector("#toast:not([hidden])")
    page.wait_for_function("!document.querySelector('#turn-text') || document.querySelector('#turn-text').value === ''")
    with database.session() as db:
        node = db.scalar(select(ConversationNode).where(ConversationNode.content == "Is it open on Mondays?"))
        assert node is not None and node.role == "user" and node.turn == 3
        parent = db.get(ConversationNode, node.parent_id)
        assert parent.completion_id == best


def test_write_the_assistant_reply_to_a_conversation_by_keyboard(page, live_server, labeler, database, settings) -> None:
    set_id, _ = _second_turn(database, settings, demonstration_share=1.0)
    with database.session() as db:  # another labeler writes the seed's reply: the second turn is left
        helper = make_labeler(db, "helper")
        task = claims.next_task(db, helper, set_id, "demonstrate", lease_minutes=30)
        assert db.get(Prompt, task.prompt_id).messages is None  # the seed ("Plan a day in Lisbon.")
        submissions.submit_demonstration(db, task.id, helper, text="Start at Belém.", max_chars=1000)
        db.commit()
    browser_login(page, live_server, labeler.username)
    card = page.locator(f".set-card[data-set-id='{set_id}']")
    assert "Write replies" in card.inner_text()
    page.goto(f"{live_server}/label/{set_id}/demonstrate")
    page.wait_for_selector("#demo-text")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'demo-text'")
    assert "Where should I eat?" in page.locator(".thread-current").inner_text()
    earlier = page.locator(".thread-earlier")
    assert "Plan a day in Lisbon." in earlier.inner_text() and "Visit Belém" in earlier.inner_text()
    kb = page.keyboard
    kb.type("Try the Time Out Market,")
    kb.press("Shift+Enter")
    kb.type("then a tasca in the Alfama.")
    screenshot(page, "label-conversation-demonstrate")
    kb.press("Control+Enter")
    page.wait_for_selector("#toast:not([hidden])")
    written = "Try the Time Out Market,\nthen a tasca in the Alfama."
    with database.session() as db:
        demo = db.scalar(select(Demonstration).where(Demonstration.labeler_id == labeler.id))
        assert demo is not None and demo.text == written
        context = db.get(Prompt, demo.prompt_id)
        assert [m["content"] for m in context.messages][-1] == "Where should I eat?"
        rows = [r for r in exports.demonstration_records(db, exports.ExportFilter(prompt_set_id=set_id), True)
                if r["demonstration_id"] == demo.id]
        assert rows[0]["messages"][-1] == {"role": "assistant", "content": written}
        assert rows[0]["messages"][:-1] == context.messages
        node = db.scalar(select(ConversationNode).where(ConversationNode.demonstration_id == demo.id))
        assert node.role == "assistant" and node.source == "written" and node.author_id == labeler.id
        assert db.get(ConversationNode, node.parent_id).prompt_id == context.id


def test_start_a_conversation_by_keyboard(page, live_server, labeler, database, settings) -> None:
    set_id, _ = _second_turn(database, settings)
    browser_login(page, live_server, labeler.username)
    start = page.locator(f".set-card[data-set-id='{set_id}'] a.start-link")
    start.focus()
    page.keyboard.press("Enter")  # from the home page to the start page
    page.wait_for_selector("#seed-form")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'seed-text'")
    kb = page.keyboard
    kb.type("I have two days in Porto.")
    kb.press("Shift+Enter")
    kb.type("What should I see?")
    assert page.locator("#seed-count").text_content().startswith("44 /")
    screenshot(page, "label-conversation-start")
    kb.press("Control+Enter")
    page.wait_for_selector("#seed-started")
    assert "The model will answer it shortly" in page.locator("#seed-started").inner_text()
    text = "I have two days in Porto.\nWhat should I see?"
    with database.session() as db:
        node = db.scalar(select(ConversationNode).where(ConversationNode.content == text))
        assert node is not None and node.role == "user" and node.source == "seed"
        assert node.parent_id is None and node.author_id == labeler.id and node.turn == 1
        assert db.get(Prompt, node.prompt_id).text == text
        assert page.locator("#seed-started").get_attribute("data-node-id") == str(node.id)

    # the next one with Tab and Enter: the text box is focused again, empty
    page.wait_for_function("document.activeElement && document.activeElement.id === 'seed-text'")
    assert page.locator("#seed-text").input_value() == ""
    kb.type("Is Sintra worth a day trip?")
    kb.press("Tab")
    assert page.evaluate("document.activeElement.id") == "seed-submit"
    kb.press("Enter")
    page.wait_for_selector("#seed-started[data-node-id]:not([data-node-id='%d'])" % node.id)
    with database.session() as db:
        roots = db.scalars(
            select(ConversationNode.content).where(
                ConversationNode.prompt_set_id == set_id, ConversationNode.parent_id.is_(None),
                ConversationNode.author_id == labeler.id,
            ).order_by(ConversationNode.id)
        ).all()
        assert roots == [text, "Is Sintra worth a day trip?"]
