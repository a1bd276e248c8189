"""The OpenAPI document and schemathesis against it (issue 8, hostile input).

schemathesis generates requests from ``/openapi.json`` and sends them through the ASGI app
as an admin and as a labeler, with a prompt set, prompts, completions, a ranking, a run
and a policy in the database so that small ids exist. Checks: no 5xx, every status code
is documented, and every response matches its declared content type and schema.
"""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_openapi_json_and_docs_load(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["info"]["title"] == "rlhf-studio"
    assert "/api/v1/prompt-sets/{prompt_set_id}/prompts" in doc["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower() and "/openapi.json" in docs.text


# ---------------------------------------------------------------- schemathesis

import pytest  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update  # noqa: E402

from app.models import ApiToken, RunLog, RunMetric, TrainingRun, User  # noqa: E402
from tests.admin_helpers import add_demonstration, add_ranking  # noqa: E402
from tests.factories import ready_set  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def backend() -> str:
    """SQLite only: the fuzzing is about the HTTP edge; the database tests cover PostgreSQL."""
    return "sqlite"


@pytest.fixture
def seeded(database, admin, labeler) -> None:  # type: ignore[no-untyped-def]
    """Rows with small ids (1, 2, ...) so generated ids sometimes hit real objects."""
    with database.session() as db:
        ps, prompts, policy = ready_set(db, "fuzz", n_prompts=3, k=3, guidelines="Rank *helpfulness*.")
        completions = [c.id for c in prompts[0].completions] if hasattr(prompts[0], "completions") else []
        from sqlalchemy import select

        from app.models import Completion

        completions = list(db.scalars(select(Completion.id).where(Completion.prompt_id == prompts[0].id)))
        add_ranking(db, prompts[0], labeler.id, [[completions[0]], [completions[1], completions[2]]])
        add_demonstration(db, prompts[1], labeler.id, "A demonstration.")
        run = TrainingRun(status="succeeded", stage="promote", prompt_set_ids=[ps.id], progress=1.0, policy_id=policy.id)
        db.add(run)
        db.flush()
        db.add(RunLog(run_id=run.id, message="done"))
        db.add(RunMetric(run_id=run.id, stage="rm", step=1, name="loss", value=0.5))
        db.add(TrainingRun(status="queued", prompt_set_ids=[ps.id]))


@pytest.fixture
def restore(admin, labeler, database):  # type: ignore[no-untyped-def]
    """Undo what a generated request may have done to the two test accounts (disabled one,
    revoked its token, changed its role), so that every case runs with a working token."""

    def run() -> None:
        with database.session() as db:
            for who in (admin, labeler):
                db.execute(update(User).where(User.id == who.id).values(is_active=True, role=who.role))
                db.execute(update(ApiToken).where(ApiToken.user_id == who.id).values(revoked_at=None))

    return run


def _with_real_ids(values: object) -> object:
    """``values`` with every ``*_id`` key set to 1 (a row that exists), when it is a dict."""
    if not isinstance(values, dict):
        return values
    return {k: 1 if isinstance(k, str) and k.endswith("_id") else v for k, v in values.items()}


def _fuzz(app, headers: dict[str, str], restore) -> tuple[list[str], dict[str, list[int]]]:  # type: ignore[no-untyped-def]
    """Every operation, positive and negative cases; in half of them the ids in the path,
    query and body are set to 1 (rows that exist). Returns one line per failing operation
    and the statuses each operation answered with."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    seen: dict[str, list[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=cases, real_ids=st.booleans())
        @FUZZ
        def run(case, real_ids: bool) -> None:  # type: ignore[no-untyped-def]
            restore()
            if real_ids:
                case.path_parameters = _with_real_ids(case.path_parameters)
                case.query = _with_real_ids(case.query)
                case.body = _with_real_ids(case.body)
            response = case.call(headers=headers)
            seen.setdefault(operation.label, []).append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # one report per operation, then the next one
            failures.append(f"{operation.label}: {str(exc).strip()[:3000]}")
    return failures, seen


FUZZ = settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


def test_api_as_admin_conforms_to_the_openapi_document(app, seeded, admin, restore) -> None:
    failures, seen = _fuzz(app, admin.headers, restore)
    assert not failures, "\n\n".join(failures)
    # The fuzzing reached the routes' work, not only the validation in front of them.
    succeeded = [op for op, statuses in seen.items() if any(200 <= s < 300 for s in statuses)]
    assert len(succeeded) >= 25, seen


def test_api_as_labeler_conforms_to_the_openapi_document(app, seeded, labeler, restore) -> None:
    failures, seen = _fuzz(app, labeler.headers, restore)
    assert not failures, "\n\n".join(failures)
    assert any(s == 200 for s in seen["POST /api/v1/tasks/next"]), seen["POST /api/v1/tasks/next"]
    admin_only = [op for op in seen if not op.split(" ", 1)[1].startswith(("/api/v1/tasks", "/api/v1/me", "/api/v1/health"))]
    leaked = {op: seen[op] for op in admin_only if any(200 <= s < 300 for s in seen[op])}
    assert not leaked, f"a labeler's token got a 2xx from admin routes: {leaked}"
