"""GET /api/v1/completions: filters and roles."""

from __future__ import annotations

from tests.factories import make_prompts, ready_set


def test_completions_filter_by_policy_and_split(client, admin, labeler, database) -> None:
    with database.session() as db:
        ps, prompts, policy = ready_set(db, "sim", n_prompts=2, k=3)
        make_prompts(db, ps, ["held out"], split="validation")
        ps_id, policy_id = ps.id, policy.id
    rows = client.get("/api/v1/completions", params={"prompt_set_id": ps_id}, headers=admin.headers).json()
    assert len(rows) == 6 and {r["policy_id"] for r in rows} == {policy_id}
    assert rows[0]["prompt"].startswith("Prompt number")
    val = client.get(
        "/api/v1/completions", params={"prompt_set_id": ps_id, "split": "validation"}, headers=admin.headers
    ).json()
    assert val == []
    assert client.get("/api/v1/completions", headers=labeler.headers).status_code == 403
    assert client.get("/api/v1/completions").status_code == 401
