from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class CompletionOut(BaseModel):
    id: int
    prompt_id: int
    prompt: str
    split: str
    policy_id: int
    text: str
    seed: int | None
    params: dict
    token_count: int
    finish_reason: str
    gen_time_s: float
    status: str
    created_at: datetime
