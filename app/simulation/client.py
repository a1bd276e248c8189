"""A small typed client for the rlhf-studio JSON API (httpx), used by the simulator and benchmarks."""

from __future__ import annotations

import time
from typing import Any

import httpx


class ApiError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        try:
            detail = response.json().get("detail")
        except Exception:
            detail = response.text[:300]
        super().__init__(f"{response.request.method} {response.request.url.path}: {response.status_code} {detail}")
        self.status_code = response.status_code


class StudioClient:
    """One authenticated API session (Bearer token). Retries 503 and connection errors."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0, retries: int = 5) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self.retries = retries

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> StudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 202, 204), **kw: Any) -> httpx.Response:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if r.status_code in ok:
                    return r
                if r.status_code != 503 or attempt == self.retries:
                    raise ApiError(r)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202, 204)) -> httpx.Response:
        return self.request("POST", path, json=body, ok=ok)

    # --- admin -----------------------------------------------------------------------
    def create_user(self, username: str, password: str, role: str = "labeler") -> dict[str, Any]:
        return self.post("/users", {"username": username, "password": password, "role": role}).json()

    def create_token(self, user_id: int, name: str = "simulate") -> str:
        return self.post(f"/users/{user_id}/tokens", {"name": name}).json()["token"]

    def prompt_sets(self) -> list[dict[str, Any]]:
        return self.get("/prompt-sets")

    def start_round(self, prompt_set_ids: list[int], deploy: bool = True, config: dict | None = None) -> int:
        body = {"prompt_set_ids": prompt_set_ids, "deploy": deploy, "config": config or {}}
        return self.post("/training/rounds", body).json()["run_id"]

    def run(self, run_id: int) -> dict[str, Any]:
        return self.get(f"/training/runs/{run_id}")

    def policies(self) -> list[dict[str, Any]]:
        return self.get("/policies")

    def completions(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/completions", **filters)

    # --- labeler ---------------------------------------------------------------------
    def next_task(self, prompt_set_id: int, kind: str = "rank") -> dict[str, Any] | None:
        r = self.post("/tasks/next", {"prompt_set_id": prompt_set_id, "kind": kind})
        return None if r.status_code == 204 else r.json()

    def submit_ranking(self, task_id: int, ranking: list[list[int]], **extra: Any) -> dict[str, Any]:
        return self.post(f"/tasks/{task_id}/ranking", {"ranking": ranking, **extra}).json()

    def submit_demonstration(self, task_id: int, text: str) -> dict[str, Any]:
        return self.post(f"/tasks/{task_id}/demonstration", {"text": text}).json()

    def skip(self, task_id: int, reason: str = "") -> None:
        self.post(f"/tasks/{task_id}/skip", {"reason": reason})
