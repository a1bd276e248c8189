"""The admin dashboard in a real browser: create a set, upload prompts, see progress, start a
round from the form; and every page with realistic data (screenshots kept for review)."""

from __future__ import annotations

import json
import math
from datetime import timedelta

from sqlalchemy import select

from app.models import Completion, RunLog, RunMetric, TrainingRun
from app.models.base import utcnow
from app.services import audit
from tests.admin_helpers import add_demonstration, add_ranking, add_skip
from tests.browser.conftest import browser_login, screenshot
from tests.factories import make_policy, ready_set


def test_create_set_upload_see_progress_and_start_a_round(page, live_server, admin, database, tmp_path) -> None:
    browser_login(page, live_server, "admin")
    page.goto(f"{live_server}/admin/prompt-sets")
    form = page.locator("#create form")
    form.locator("input[name=name]").fill("browser-set")
    form.locator("input[name=k]").fill("3")
    form.locator("input[name=overlap]").fill("2")
    form.locator("textarea[name=guidelines]").fill("# Rank by *helpfulness*\n<script>alert(1)</script>")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/admin/prompt-sets/*?created=1")
    assert "Prompt set created" in page.inner_text(".notice")
    # Guidelines render as Markdown with raw HTML escaped.
    assert page.locator(".guidelines h1").inner_text() == "Rank by helpfulness"
    assert page.locator(".guidelines script").count() == 0

    # A file with a bad line: the error names the line, nothing is imported.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps({"prompt": "fine"}), '{"prompt": ', json.dumps({"prompt": "ok"})]) + "\n")
    page.set_input_files("#upload input[type=file]", str(bad))
    page.click("#upload button[type=submit]")
    page.wait_for_load_state("networkidle")
    errors = page.locator("#import-errors")
    assert "Nothing was imported" in errors.inner_text()
    assert errors.locator("td").first.inner_text() == "2"
    screenshot(page, "admin-import-errors")

    good = tmp_path / "prompts.csv"
    rows = [f"Question number {i}: why?" for i in range(40)]
    good.write_text("prompt,split\n" + "\n".join(f"{t},{'validation' if i < 5 else ''}" for i, t in enumerate(rows)) + "\n")
    page.set_input_files("#upload input[type=file]", str(good))
    page.click("#upload button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "Imported 40 prompt(s)" in page.inner_text("#import-result")
    total = page.locator("#progress-table tr[data-split=total] td")
    assert total.nth(1).inner_text() == "40"
    assert page.locator("#progress-table tr[data-split=validation] td").nth(1).inner_text() >= "5"
    screenshot(page, "admin-prompt-set")

    # Start a round from the form; it lands on the run page, queued.
    page.goto(f"{live_server}/admin/runs")
    page.check("#round-form input[name=prompt_set_ids] >> nth=0")
    page.uncheck("#round-form input[value=ppo]")
    page.fill("#round-form textarea[name=config]", '{"sft_epochs": 2}')
    page.click("#round-form button[type=submit]")
    page.wait_for_url("**/admin/runs/*")
    assert page.locator("#run-status").inner_text() == "queued"
    with database.session() as db:
        run = db.scalar(select(TrainingRun))
        assert run.stages == ["sft", "rm"] and run.config == {"sft_epochs": 2} and run.created_by_id == admin.id
    screenshot(page, "admin-run-queued")
    # The runs list updates live when the run moves on.
    page.goto(f"{live_server}/admin/runs")
    with database.session() as db:
        r = db.get(TrainingRun, run.id)
        r.status, r.stage, r.progress = "running", "sft", 0.4
    page.wait_for_function(
        "document.querySelector('#runs-table tr[data-run] .badge').textContent === 'running'", timeout=10_000
    )
    assert page.locator("#runs-table tr[data-run] .bar-label").first.inner_text().endswith("40%")
    screenshot(page, "admin-runs")


def _seed(database, make_account):  # type: ignore[no-untyped-def]
    """Two sets with rankings by three labelers, gold, three policies and a run with metrics."""
    people = [make_account("labeler", n) for n in ("alice", "bob", "carol")]
    with database.session() as db:
        from app.models import User

        admin_user = db.scalar(select(User).where(User.username == "admin"))
        v0 = make_policy(db, base="SmolLM2-135M-Instruct")
        ps, prompts, _ = ready_set(db, "helpfulness", n_prompts=12, k=4, overlap=2, demonstration_share=0.25,
                                   guidelines="Prefer **honest**, helpful answers.")
        ready_set(db, "summaries", n_prompts=6, k=2)
        for p in prompts[9:]:
            p.split = "validation"
        comps = {p.id: list(db.scalars(select(Completion.id).where(Completion.prompt_id == p.id).order_by(Completion.id)))
                 for p in prompts}
        gold_prompt = prompts[0]
        gold_prompt.is_gold, gold_prompt.gold_ranking = True, [[c] for c in comps[gold_prompt.id]]
        orders = {
            "alice": lambda c: [[c[0]], [c[1]], [c[2]], [c[3]]],
            "bob": lambda c: [[c[1]], [c[0]], [c[2]], [c[3]]],
            "carol": lambda c: [[c[3]], [c[2]], [c[1], c[0]]],
        }
        for i, p in enumerate(prompts[:10]):
            for acct in people:
                if (i + len(acct.username)) % 3 == 0 and p is not gold_prompt:
                    continue
                add_ranking(db, p, acct.id, orders[acct.username](comps[p.id]), seconds=20 + 7 * i)
        add_demonstration(db, prompts[10], people[0].id, "A careful answer.")
        add_skip(db, prompts[11], people[2].id)
        now = utcnow()
        run = TrainingRun(status="succeeded", stage="promote", prompt_set_ids=[ps.id], progress=1.0, deploy=True,
                          config={"ppo_iterations": 30}, snapshot={"rankings": 20, "demonstrations": 1, "sha256": "ab12" * 4},
                          metrics={"win_rate": 0.62, "kl_from_prev": 0.8}, created_by_id=admin_user.id,
                          created_at=now - timedelta(hours=1), started_at=now - timedelta(minutes=50), finished_at=now,
                          base_policy_id=v0.id, worker_id="worker-1")
        db.add(run)
        db.flush()
        v1 = make_policy(db, parent_id=v0.id, training_run_id=run.id, artifact_path="policies/v1",
                         metrics={"win_rate": 0.62, "rm_val_accuracy": 0.71})
        make_policy(db, deployed=False, parent_id=v1.id, artifact_path="policies/v2", metrics={"win_rate": 0.55})
        run.policy_id = v1.id
        points = []
        for s in range(40):
            points.append(("sft", s, "loss", 2.5 * math.exp(-s / 12) + 0.3))
        for s in range(30):
            points += [("rm", s, "loss", 0.69 * math.exp(-s / 20) + 0.2), ("rm", s, "accuracy", 0.5 + 0.25 * (1 - math.exp(-s / 8)))]
        points += [("rm", 0, "val_accuracy", 0.52), ("rm", 29, "val_accuracy", 0.71)]
        for s in range(30):
            points += [("ppo", s, "reward", -0.5 + s * 0.04), ("ppo", s, "kl", 0.02 * s), ("ppo", s, "entropy", 2.1 - s * 0.01)]
        db.add_all(RunMetric(run_id=run.id, stage=st, step=step, name=n, value=v) for st, step, n, v in points)
        db.add_all(RunLog(run_id=run.id, message=m) for m in ("snapshot: 20 rankings, 1 demonstration", "sft done", "rm done: val accuracy 0.71", "ppo done", "registered v1, deployed"))
        failed = TrainingRun(status="failed", stage="rm", prompt_set_ids=[ps.id], progress=0.35, error="RM stage: CUDA out of memory",
                             created_at=now - timedelta(hours=2), finished_at=now - timedelta(hours=2))
        db.add_all([failed, TrainingRun(status="running", stage="ppo", prompt_set_ids=[ps.id], progress=0.6, started_at=now)])
        audit.record(db, admin_user, "prompt_set.create", "prompt_set", ps.id, name=ps.name)
        audit.record(db, admin_user, "policy.deploy", "policy", v1.id, version=1)
        return ps.id, run.id, gold_prompt.id


def test_every_admin_page_with_data(page, live_server, admin, make_account, database) -> None:
    set_id, run_id, gold_id = _seed(database, make_account)
    browser_login(page, live_server, "admin")
    screenshot(page, "admin-dashboard")
    assert page.locator("h1").inner_text() == "Dashboard"
    assert "helpfulness" in page.inner_text("main")

    page.goto(f"{live_server}/admin/prompt-sets")
    screenshot(page, "admin-prompt-sets")
    page.goto(f"{live_server}/admin/prompt-sets/{set_id}")
    screenshot(page, "admin-prompt-set-with-data")

    page.goto(f"{live_server}/admin/prompts/{gold_id}")
    screenshot(page, "admin-prompt-gold")

    page.goto(f"{live_server}/admin/quality?prompt_set_id={set_id}")
    rows = page.locator("#labelers tbody tr")
    assert rows.count() == 3
    bob = page.locator("#labelers tr[data-user=bob]")
    assert "%" in bob.locator("td").nth(9).inner_text()
    screenshot(page, "admin-quality")
    page.on("dialog", lambda d: d.accept())
    bob.locator("button:has-text('Requeue')").click()
    page.wait_for_load_state("networkidle")
    assert "Requeued" in page.inner_text(".notice")

    page.goto(f"{live_server}/admin/people")
    page.click("summary:has-text('Manage carol')")
    screenshot(page, "admin-people-manage")
    page.locator("tr[data-user=carol] input[name=name]").fill("ci-script")
    page.locator("tr[data-user=carol] button:has-text('New API token')").click()
    page.wait_for_load_state("networkidle")
    token = page.locator("#new-token code").inner_text()
    assert token.startswith("rlhf_")
    screenshot(page, "admin-people")

    page.goto(f"{live_server}/admin/runs/{run_id}")
    page.wait_for_selector("#charts svg")
    assert page.locator("#charts .chart").count() >= 6
    assert page.locator("#charts .chart h4").first.inner_text() == "SFT loss"
    screenshot(page, "admin-run")

    page.goto(f"{live_server}/admin/runs")
    screenshot(page, "admin-runs-list")

    page.goto(f"{live_server}/admin/policies")
    screenshot(page, "admin-policies")
    page.locator("tr[data-version='2'] button:has-text('Deploy')").click()
    page.wait_for_load_state("networkidle")
    assert "v2 is deployed" in page.inner_text(".notice")
    assert page.locator("tr[data-version='2'] .badge.deployed").count() == 1

    page.goto(f"{live_server}/admin/audit")
    text = page.inner_text("#audit")
    assert "policy.deploy" in text and "labeler.requeue" in text and "token.create" in text
    screenshot(page, "admin-audit")
