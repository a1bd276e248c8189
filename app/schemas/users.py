from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=256)
    role: Literal["labeler", "admin"] = "labeler"


class UserUpdate(BaseModel):
    role: Literal["labeler", "admin"] | None = None
    is_active: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=256)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    is_active: bool
    created_at: datetime
    last_active_at: datetime | None = None


class TokenCreate(BaseModel):
    name: str = Field(default="api", min_length=1, max_length=128)


class TokenCreated(BaseModel):
    id: int
    name: str
    token: str = Field(description="shown once; only its hash is stored")


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
