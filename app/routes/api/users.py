"""Users and API tokens (admin only)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import DB, ApiAdmin, ApiUser
from app.schemas.users import TokenCreate, TokenCreated, TokenOut, UserCreate, UserOut, UserUpdate
from app.services import audit, tokens, users

router = APIRouter(tags=["users"])


@router.get("/me", response_model=UserOut)
def me(principal: ApiUser) -> UserOut:
    return UserOut.model_validate(principal.user)


@router.get("/users", response_model=list[UserOut])
def list_users(db: DB, _: ApiAdmin) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in users.list_users(db)]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserCreate, db: DB, admin: ApiAdmin) -> UserOut:
    user = users.create_user(db, body.username, body.password, body.role)
    audit.record(db, admin.user, "user.create", "user", user.id, username=user.username, role=user.role)
    db.commit()
    return UserOut.model_validate(user)


@router.patch("/users/{user_id}", response_model=UserOut)
def update_user(user_id: int, body: UserUpdate, db: DB, admin: ApiAdmin) -> UserOut:
    user = users.update_user(
        db, users.get_user(db, user_id), role=body.role, is_active=body.is_active, password=body.password
    )
    changed = body.model_dump(exclude_none=True, exclude={"password"})
    if body.password is not None:
        changed["password"] = "reset"
    audit.record(db, admin.user, "user.update", "user", user.id, **changed)
    db.commit()
    return UserOut.model_validate(user)


@router.post("/users/{user_id}/tokens", response_model=TokenCreated, status_code=201)
def create_token(user_id: int, db: DB, admin: ApiAdmin, body: TokenCreate | None = None) -> TokenCreated:
    user = users.get_user(db, user_id)
    token, plaintext = tokens.create_token(db, user, (body or TokenCreate()).name)
    audit.record(db, admin.user, "token.create", "token", token.id, user_id=user.id, name=token.name)
    db.commit()
    return TokenCreated(id=token.id, name=token.name, token=plaintext)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(db: DB, _: ApiAdmin, user_id: int | None = None) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in tokens.list_tokens(db, user_id)]


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut)
def revoke_token(token_id: int, db: DB, admin: ApiAdmin) -> TokenOut:
    token = tokens.revoke_token(db, token_id)
    audit.record(db, admin.user, "token.revoke", "token", token.id)
    db.commit()
    return TokenOut.model_validate(token)
