"""Stored XSS, checked in a real browser (issue 8): prompt, completion, guidelines, set name,
username, token name, demonstration, comment, run error and audit text all hold script
payloads; every page that shows them is loaded in Chromium and must run none of them
(``window.__xss`` stays undefined, no dialog opens, no injected element exists) while
showing the payloads as plain text. The Content-Security-Policy (script only from /static)
is the second line of defence; the pages must work under it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.models import Completion, RunLog, RunMetric, TrainingRun, User
from app.models.base import utcnow
from app.services import audit, tokens
from tests.admin_helpers import add_demonstration, add_ranking, add_skip
from tests.browser.conftest import browser_login, screenshot
from tests.factories import make_completions, make_policy, make_prompt_set, make_prompts

SCRIPT = "<script>window.__xss=1</script>"
IMG = '"><img src=x onerror="window.__xss=1">'
SVG = "<svg/onload=alert(document.domain)>"
BOTH = f"{IMG} {SCRIPT}"
# A link whose target would run script, and raw HTML, inside the Markdown guidelines.
GUIDELINES = f"# Rules {SCRIPT}\n\nRead [the rules](javascript:window.__xss=1) {IMG} {SVG}\n\n* be *kind*"

# Nothing on the page may have run a payload or hold an element a payload would create.
INERT = """() => ({
  xss: typeof window.__xss,
  injected: document.querySelectorAll('img[src="x"], svg[onload], [onerror], [onload]').length,
  scripts: [...document.scripts].filter(s => s.type !== 'application/json' && s.textContent.includes('__xss')).length,
  js_links: [...document.querySelectorAll('a[href]')].filter(a => a.href.trim().toLowerCase().startsWith('javascript:')).length,
})"""


def _seed(database, make_account):  # type: ignore[no-untyped-def]
    """Every user-controlled text holds the payloads. Returns the ids the pages need."""
    writer = make_account("labeler", SCRIPT)  # has a ranking, a demonstration, a skip
    browser = make_account("labeler", IMG)  # logs in to see the labeler's pages
    with database.session() as db:
        admin_user = db.scalar(select(User).where(User.username == "admin"))
        policy = make_policy(db, base=BOTH, metrics={"note": BOTH})
        failed = make_policy(db, deployed=False, artifact_path="policies/v1", status="failed", error=BOTH)
        ps = make_prompt_set(db, BOTH, k=2, overlap=2, description=f"About {BOTH} {SVG}", guidelines=GUIDELINES)
        rank_prompt, demo_prompt, gold_prompt = make_prompts(
            db, ps, [f"Rank this: {BOTH} {SVG}", f"Write this: {BOTH}", f"Gold: {BOTH}"]
        )
        demo_prompt.wants_demonstration = True
        for p in (rank_prompt, gold_prompt):
            make_completions(db, p, policy, 2, [f"First {BOTH}", f"Second {SCRIPT} {SVG}"])
        gold_ids = list(db.scalars(select(Completion.id).where(Completion.prompt_id == gold_prompt.id).order_by(Completion.id)))
        gold_prompt.is_gold, gold_prompt.gold_ranking = True, [[gold_ids[0]], [gold_ids[1]]]
        ranking = add_ranking(db, gold_prompt, writer.id, [[gold_ids[1]], [gold_ids[0]]])
        ranking.comment = f"comment {BOTH}"
        add_demonstration(db, demo_prompt, writer.id, f"demo {BOTH}")
        skip = add_skip(db, rank_prompt, writer.id)
        skip.skip_reason = f"reason {BOTH}"
        tokens.create_token(db, db.get(User, writer.id), f"token {BOTH}"[:128])
        now = utcnow()
        run = TrainingRun(
            status="failed", stage="rm", prompt_set_ids=[ps.id], progress=0.4, error=f"RM stage: {BOTH}",
            created_by_id=admin_user.id, created_at=now - timedelta(minutes=5), finished_at=now,
            base_policy_id=policy.id, policy_id=failed.id, metrics={"note": BOTH}, snapshot={"note": BOTH},
            worker_id=BOTH[:64],
        )
        db.add(run)
        db.flush()
        db.add(RunLog(run_id=run.id, message=f"log line {BOTH}"))
        db.add_all(RunMetric(run_id=run.id, stage="rm", step=s, name="loss", value=1.0 / (s + 1)) for s in range(3))
        audit.record(db, admin_user, "prompt_set.create", "prompt_set", ps.id, name=BOTH)
        audit.record(db, admin_user, "user.create", "user", writer.id, username=SCRIPT)
        return {"set": ps.id, "prompt": rank_prompt.id, "gold": gold_prompt.id, "run": run.id, "browser": browser.username}


def _visit(page, url: str, dialogs: list[str], wait_for: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    response = page.goto(url)
    assert "script-src 'self'" in response.headers.get("content-security-policy", ""), url
    if wait_for:
        page.wait_for_selector(wait_for)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)  # let polling scripts render what they fetched
    state = page.evaluate(INERT)
    state["text"] = page.evaluate("document.body.innerText")
    state["dialogs"] = list(dialogs)
    return state


def _assert_inert(state: dict, url: str, shown: tuple[str, ...]) -> None:
    assert state["xss"] == "undefined", f"{url}: a payload ran"
    assert state["dialogs"] == [], f"{url}: a dialog opened: {state['dialogs']}"
    assert state["injected"] == 0 and state["scripts"] == 0 and state["js_links"] == 0, (url, state)
    missing = [s for s in shown if s not in state["text"]]
    assert not missing, f"{url}: not shown as text: {missing}"


@pytest.fixture
def strict_page(browser):  # type: ignore[no-untyped-def]
    """A page under the app's real Content-Security-Policy (the shared fixture bypasses it)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def test_script_payloads_stay_inert_text_on_every_page(
    strict_page, live_server, admin, make_account, database, settings
) -> None:
    page = strict_page
    settings.gold_rate = 0.0  # the ranking page serves the "Rank this" prompt, not the gold one
    ids = _seed(database, make_account)
    dialogs: list[str] = []

    def on_dialog(d) -> None:  # type: ignore[no-untyped-def]
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    # The Content-Security-Policy must not break the pages themselves (no inline script).
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    base = live_server
    labeler_pages = [
        ("/label", None, (BOTH, SVG)),
        (f"/label/{ids['set']}/rank", ".comp-text", (BOTH, f"Rank this: {BOTH} {SVG}", f"First {BOTH}", f"Second {SCRIPT} {SVG}")),
        (f"/label/{ids['set']}/demonstrate", ".prompt-text", (f"Write this: {BOTH}",)),
    ]
    browser_login(page, base, ids["browser"])
    for path, wait_for, shown in labeler_pages:
        state = _visit(page, base + path, dialogs, wait_for)
        _assert_inert(state, path, (IMG, *shown))  # IMG: the username in the top bar
    # The guidelines, opened, are Markdown: headings and emphasis render, raw HTML shows as text.
    page.goto(f"{base}/label/{ids['set']}/rank")
    page.wait_for_selector(".comp-text")
    page.click(".guidelines summary")
    body = page.locator(".guidelines-body")
    assert body.locator("h1").inner_text() == f"Rules {SCRIPT}" and body.locator("em").inner_text() == "kind"
    assert IMG in body.inner_text() and SVG in body.inner_text()
    screenshot(page, "xss-label-rank")

    page.context.clear_cookies()
    browser_login(page, base, "admin")
    admin_pages = [
        ("/admin", (BOTH,)),
        ("/admin/prompt-sets", (BOTH,)),
        (f"/admin/prompt-sets/{ids['set']}", (BOTH, f"Rank this: {BOTH} {SVG}")),
        (f"/admin/prompts/{ids['gold']}", (f"Gold: {BOTH}", f"First {BOTH}", f"Second {SCRIPT} {SVG}")),
        ("/admin/people", (SCRIPT, IMG, f"token {BOTH}")),
        ("/admin/quality", (SCRIPT, IMG)),
        (f"/admin/quality?prompt_set_id={ids['set']}", (SCRIPT,)),
        ("/admin/runs", (BOTH,)),
        (f"/admin/runs/{ids['run']}", (f"RM stage: {BOTH}", f"log line {BOTH}")),
        ("/admin/policies", (BOTH,)),
        # Details are JSON: the payload's quotes show escaped, its markup as typed.
        ("/admin/audit", (SCRIPT, json.dumps(BOTH)[1:-1])),
    ]
    for path, shown in admin_pages:
        state = _visit(page, base + path, dialogs)
        _assert_inert(state, path, shown)
        screenshot(page, "xss" + path.replace("/", "-").replace("?", "-").replace("=", "-"))
    # The quality page's set picker submits on change through admin.js (not an inline handler).
    page.goto(f"{base}/admin/quality")
    page.select_option("select[name=prompt_set_id]", str(ids["set"]))
    page.wait_for_url(f"**/admin/quality?prompt_set_id={ids['set']}")
    assert csp_errors == []
