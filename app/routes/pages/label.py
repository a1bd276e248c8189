"""Labeler pages: the list of active sets, the ranking page, the demonstration page and
(conversation sets) the continue page and the "Start a conversation" page.

The two work pages are thin shells: static/label.js claims tasks and submits answers
through the JSON API (``/api/v1/tasks/...``) with ``rlhf.api``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.db import transact
from app.deps import DB, PageUser, verify_form_csrf
from app.models import FLAGS, PromptSet
from app.services import conversations, prompt_sets, seeds, tasks
from app.services.errors import Invalid, ServiceError
from app.templating import render

router = APIRouter(include_in_schema=False)

# How the ranking page shows each flag of app.models.FLAGS (short pill text, full wording,
# the key that toggles it on the focused card), after the questions InstructGPT's labelers
# answered for every output. The keys are free on the rank page (templates/label/rank.html
# lists them from this table).
FLAG_LABELS: dict[str, tuple[str, str, str]] = {
    "fails_instruction": ("Fails instruction", "Fails to follow the user's instruction", "i"),
    "made_up_facts": ("Made-up facts", "Makes up facts (hallucination)", "m"),
    "inappropriate_for_customer_assistant": ("Inappropriate", "Inappropriate for a customer assistant", "c"),
    "harmful_or_toxic": ("Harmful / toxic", "Harmful or toxic content", "x"),
    "sexual_or_violent": ("Sexual / violent", "Sexual or violent content", "v"),
    "moral_judgement": ("Moral judgement", "Expresses a moral judgement", "o"),
}
assert set(FLAG_LABELS) == set(FLAGS), "every flag of app.models.FLAGS needs its labels and key here"
SKIP_REASONS = (
    "I can't judge this (outside what I know)",
    "The prompt is unclear or broken",
    "The completions are broken or empty",
    "Sensitive content I'd rather not rate",
)


def _page_config(request: Request, mode: str, prompt_set_id: int) -> dict[str, Any]:
    settings = request.app.state.settings
    return {
        "mode": mode,
        "promptSetId": prompt_set_id,
        "leaseMinutes": settings.lease_minutes,
        "undoWindowMinutes": settings.undo_window_minutes,
        "maxDemonstrationChars": settings.max_demonstration_chars,
        "flags": [dict(zip(("name", "short", "label", "key"), (f, *FLAG_LABELS[f]), strict=True)) for f in FLAGS],
        "skipReasons": list(SKIP_REASONS),
    }


@router.get("/label", response_class=HTMLResponse)
def label_home(request: Request, db: DB, principal: PageUser) -> HTMLResponse:
    """Active prompt sets with this labeler's own progress and what is left for them."""
    rows = [(ps, tasks.progress(db, principal.user, ps)) for ps in prompt_sets.active_prompt_sets(db, by_name=True)]
    return render(request, "label/index.html", principal, rows=rows)


def _work_page(request: Request, db: DB, principal: PageUser, prompt_set_id: int, mode: str) -> HTMLResponse:
    ps = prompt_sets.get_prompt_set(db, prompt_set_id)
    return render(
        request,
        f"label/{mode}.html",
        principal,
        ps=ps,
        config=_page_config(request, mode, ps.id),
    )


@router.get("/label/{prompt_set_id}/rank", response_class=HTMLResponse)
def rank_page(request: Request, prompt_set_id: int, db: DB, principal: PageUser) -> HTMLResponse:
    return _work_page(request, db, principal, prompt_set_id, "rank")


@router.get("/label/{prompt_set_id}/continue", response_class=HTMLResponse)
def continue_page(request: Request, prompt_set_id: int, db: DB, principal: PageUser) -> HTMLResponse:
    """Conversation sets: write the next user turn after a best-ranked or written reply."""
    ps = prompt_sets.get_prompt_set(db, prompt_set_id)
    if not conversations.is_conversation(ps):
        raise Invalid(f"prompt set {ps.name!r} is not a conversation set; there is nothing to continue")
    return _work_page(request, db, principal, prompt_set_id, "continue")


@router.get("/label/{prompt_set_id}/demonstrate", response_class=HTMLResponse)
def demonstrate_page(request: Request, prompt_set_id: int, db: DB, principal: PageUser) -> HTMLResponse:
    return _work_page(request, db, principal, prompt_set_id, "demonstrate")


def _conversation_set(db: DB, prompt_set_id: int) -> PromptSet:
    ps = prompt_sets.get_prompt_set(db, prompt_set_id)
    if not conversations.is_conversation(ps):
        raise Invalid(f"prompt set {ps.name!r} is not a conversation set; conversations start in conversation sets")
    return ps


def _start_page(
    request: Request, principal: PageUser, ps: PromptSet, *, status_code: int = 200, **ctx: Any
) -> HTMLResponse:
    return render(
        request, "label/start.html", principal, status_code=status_code, ps=ps,
        max_chars=conversations.settings_of(ps).max_context_chars, **ctx,
    )


@router.get("/label/{prompt_set_id}/start", response_class=HTMLResponse)
def start_page(
    request: Request, prompt_set_id: int, db: DB, principal: PageUser, started: int | None = None
) -> HTMLResponse:
    """Conversation sets: write the opening user message of a new conversation. After a
    post (``?started=`` the new seed's node) the page confirms it; the model answers later."""
    ps = _conversation_set(db, prompt_set_id)
    seed = seeds.own_seed(db, ps.id, started, principal.user) if started else None
    return _start_page(request, principal, ps, seed=seed)


@router.post("/label/{prompt_set_id}/start", response_class=HTMLResponse)
async def start_conversation(request: Request, prompt_set_id: int, db: DB, principal: PageUser) -> Response:
    """The form post of the start page (CSRF-checked): the seed goes through the same service
    as ``POST /api/v1/prompt-sets/{id}/seeds``; then back to the page (303) to confirm it.
    A refused seed shows the page again with the reason and the text as sent."""
    await verify_form_csrf(request, principal)
    form = await request.form()
    text = str(form.get("text") or "")
    settings = request.app.state.settings

    def write() -> seeds.WrittenSeed:
        return seeds.write_seed(
            db, prompt_set_id, principal.user, text=text, validation_fraction=settings.validation_fraction
        )

    def refused(exc: ServiceError) -> HTMLResponse:
        ps = _conversation_set(db, prompt_set_id)
        return _start_page(request, principal, ps, status_code=exc.status_code, error=exc.message, text=text)

    try:
        seed = await run_in_threadpool(transact, db, write)
    except ServiceError as exc:
        return await run_in_threadpool(refused, exc)
    return RedirectResponse(f"/label/{prompt_set_id}/start?started={seed.node.id}", status_code=303)
