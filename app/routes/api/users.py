"""Users and API tokens (admin only)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import DB, ApiAdmin, ApiUser
from app.schemas.users import TokenCreate, TokenCreated, TokenOut, UserCreate, UserOut, UserUpdate
from app.services import people, tokens, users

router = APIRouter(tags=["users"])


@router.get("/me", response_model=UserOut)
def me(principal: ApiUser) -> UserOut:
    return UserOut.model_validate(principal.user)


@router.get("/users", response_model=list[UserOut])
def list_users(db: DB, _: ApiAdmin) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in users.list_users(db)]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserCreate, db: DB, admin: ApiAdmin) -> UserOut:
    user = people.add_user(db, admin.user, body.username, body.password, body.role)
    db.commit()
    return UserOut.model_validate(user)


@router.patch("/users/{user_id}", response_model=UserOut)
def update_user(user_id: int, body: UserUpdate, db: DB, admin: ApiAdmin) -> UserOut:
    """Change role, active flag or password; an admin cannot disable themselves or change
    their own role (422)."""
    user = people.change_user(
        db, admin.user, user_id, role=body.role, is_active=body.is_active, password=body.password
    )
    db.commit()
    return UserOut.model_validate(user)


@router.post("/users/{user_id}/tokens", response_model=TokenCreated, status_code=201)
def create_token(user_id: int, db: DB, admin: ApiAdmin, body: TokenCreate | None = None) -> TokenCreated:
    token, plaintext = people.issue_token(db, admin.user, user_id, (body or TokenCreate()).name)
    db.commit()
    return TokenCreated(id=token.id, name=token.name, token=plaintext)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(db: DB, _: ApiAdmin, user_id: int | None = None) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in tokens.list_tokens(db, user_id)]


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut)
def revoke_token(token_id: int, db: DB, admin: ApiAdmin) -> TokenOut:
    token = people.revoke_token(db, admin.user, token_id)
    db.commit()
    return TokenOut.model_validate(token)
