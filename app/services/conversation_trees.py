"""Reading a conversation set's trees as trees: the admin's view of what labelers and the
sampler grew (the API's ``GET /prompt-sets/{id}/trees`` and the dashboard's Trees page).

A page of trees is two statements whatever its size: the page's seeds, then every node of
those trees with who wrote it (the policy version of a sampled reply, the labeler of a
written reply, continuation or labeler-written seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.models import Completion, ConversationNode, Policy, PromptSet, User
from app.services.conversations import settings_of

MAX_TREES_PER_PAGE = 50


@dataclass
class TreeNode:
    """One message of a tree, with its children in the order they were added."""

    id: int
    role: str
    content: str
    source: str  # app.models.conversations.NodeSource
    turn: int
    best_votes: int
    policy_version: int | None  # sampled replies
    author: str | None  # labeler-written messages
    prompt_id: int | None  # user nodes: the context that ends here
    completion_id: int | None
    children: list[TreeNode] = field(default_factory=list)

    @property
    def size(self) -> int:
        return 1 + sum(c.size for c in self.children)


@dataclass
class TreesPage:
    prompt_set_id: int
    total: int
    offset: int
    limit: int
    trees: list[TreeNode]


def list_trees(db: Session, ps: PromptSet, offset: int = 0, limit: int = 20) -> TreesPage:
    """The set's trees from ``offset`` (oldest seed first), at most ``limit`` of them (up to
    :data:`MAX_TREES_PER_PAGE`). Invalid unless ``ps`` is a conversation set."""
    settings_of(ps)  # Invalid for other kinds
    offset, limit = max(0, offset), max(1, min(limit, MAX_TREES_PER_PAGE))
    N = ConversationNode
    seeds = N.prompt_set_id == ps.id, N.parent_id.is_(None)
    total = db.scalar(select(func.count()).select_from(N).where(*seeds)) or 0
    root_ids = list(db.scalars(select(N.id).where(*seeds).order_by(N.id).offset(offset).limit(limit)))
    if not root_ids:
        return TreesPage(ps.id, total, offset, limit, [])
    rows = db.execute(
        select(N, Policy.version, User.username)
        .outerjoin(Completion, Completion.id == N.completion_id)
        .outerjoin(Policy, Policy.id == Completion.policy_id)
        .outerjoin(User, User.id == N.author_id)
        .where(or_(N.id.in_(root_ids), N.root_id.in_(root_ids)))
        .order_by(N.depth, N.id)
    ).all()
    nodes: dict[int, TreeNode] = {}
    for node, version, author in rows:  # parents come first (ordered by depth)
        nodes[node.id] = TreeNode(
            id=node.id, role=node.role, content=node.content, source=node.source, turn=node.turn,
            best_votes=node.best_votes, policy_version=version, author=author,
            prompt_id=node.prompt_id, completion_id=node.completion_id,
        )
        if node.parent_id is not None and node.parent_id in nodes:
            nodes[node.parent_id].children.append(nodes[node.id])
    return TreesPage(ps.id, total, offset, limit, [nodes[i] for i in root_ids if i in nodes])
