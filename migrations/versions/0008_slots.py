"""open slots: one ``slots`` row per (prompt, kind, policy) with its taken-slot counters and
whether it is the pair a claim serves now, kept by triggers in the same transaction as
every write to tasks, completions, policies, prompts and prompt sets; filled from the
existing rows

Revision ID: 0008
Revises: 0007

The triggers are the whole contract (app/services/slots.py explains the columns):

- ``tasks``: ``submitted`` / ``leased`` / ``taken`` count the pair's tasks in those states
  (a lapsed lease still counts until a claim marks it expired); ``next_lapse`` is a lower
  bound of the pair's lease expiries (NULL when nothing is leased).
- ``completions``, ``policies.deployed``, ``prompts.is_gold`` / ``wants_demonstration``,
  ``prompt_sets.k``: ``served`` marks the one rank pair per regular prompt whose
  completions a rank task shows now (the rule of app/services/serving.py) and the
  demonstrate row of a prompt that wants demonstrations.

- ``slot_totals`` per (prompt set, kind, policy): ``served`` rows and the served rows with a
  free slot (``open``: ``taken < overlap``), and (kind ``prompts``) the set's regular
  prompts, so a labeler's progress reads a few rows instead of counting the set. On
  PostgreSQL the slots trigger that keeps them is deferred to commit, so that every claim
  takes its slots row lock before this shared row's and holds the latter only while it
  commits.

SQLite's batch mode recreates a table and drops its triggers: a later migration that
alters ``tasks``, ``completions``, ``policies``, ``prompts`` or ``prompt_sets`` in batch
mode must create them again (:func:`create_triggers`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOT_KINDS = "('rank', 'demonstrate')"
SLOT_STATES = "('submitted', 'leased')"


def served_policy(p: str, k: str) -> str:
    """SQL: the policy whose completions a rank task on prompt ``p`` shows (NULL: none has K)."""
    deployed = "(SELECT id FROM policies WHERE deployed = TRUE)"
    return f"""(CASE WHEN (SELECT count(*) FROM completions d WHERE d.prompt_id = {p}.id
        AND d.status = 'ready' AND d.policy_id = {deployed}) >= {k} THEN {deployed}
      ELSE (SELECT c.policy_id FROM completions c JOIN policies pol ON pol.id = c.policy_id
        WHERE c.prompt_id = {p}.id AND c.status = 'ready'
        GROUP BY c.policy_id, pol.version HAVING count(c.id) >= {k}
        ORDER BY pol.version DESC LIMIT 1) END)"""


def refresh_rank(cond: str) -> list[str]:
    """SQL statements: make the served flags of the rank rows of the prompts ``p`` where
    ``cond`` holds match the rule (adding the served pair's row when missing)."""
    return [
        f"""INSERT INTO slots (prompt_set_id, prompt_id, kind, policy_id, served, submitted, leased, taken)
        SELECT x.psid, x.pid, 'rank', x.pol, FALSE, 0, 0, 0 FROM (
          SELECT p.prompt_set_id AS psid, p.id AS pid, {served_policy('p', 'ps.k')} AS pol
          FROM prompts p JOIN prompt_sets ps ON ps.id = p.prompt_set_id WHERE {cond}) x
        WHERE x.pol IS NOT NULL
        ON CONFLICT (prompt_id, kind, policy_id) DO NOTHING""",
        f"""UPDATE slots SET served = NOT served
        WHERE kind = 'rank' AND prompt_id IN (SELECT p.id FROM prompts p WHERE {cond})
          AND served <> COALESCE((SELECT (NOT p.is_gold) AND slots.policy_id = {served_policy('p', 'ps.k')}
            FROM prompts p JOIN prompt_sets ps ON ps.id = p.prompt_set_id WHERE p.id = slots.prompt_id), FALSE)""",
    ]


def refresh_demonstrate(cond: str) -> list[str]:
    return [
        f"""INSERT INTO slots (prompt_set_id, prompt_id, kind, policy_id, served, submitted, leased, taken)
        SELECT p.prompt_set_id, p.id, 'demonstrate', 0, FALSE, 0, 0, 0 FROM prompts p
        WHERE ({cond}) AND p.wants_demonstration = TRUE
        ON CONFLICT (prompt_id, kind, policy_id) DO NOTHING""",
        f"""UPDATE slots SET served = NOT served
        WHERE kind = 'demonstrate' AND prompt_id IN (SELECT p.id FROM prompts p WHERE {cond})
          AND served <> (SELECT p.wants_demonstration FROM prompts p WHERE p.id = slots.prompt_id)""",
    ]


def _key(r: str) -> str:
    return f"(CASE WHEN {r}.kind = 'rank' THEN COALESCE({r}.policy_id, 0) ELSE 0 END)"


def _counts(r: str) -> tuple[str, str]:
    return (
        f"(CASE WHEN {r}.status = 'submitted' THEN 1 ELSE 0 END)",
        f"(CASE WHEN {r}.status = 'leased' THEN 1 ELSE 0 END)",
    )


def add_task(r: str, guard: str = "") -> str:
    """SQL: count task row ``r`` (NEW) in its pair's row (created when missing)."""
    s, l = _counts(r)
    where = f" WHERE {guard}" if guard else " WHERE TRUE"
    return f"""INSERT INTO slots (prompt_set_id, prompt_id, kind, policy_id, served, submitted, leased, taken, next_lapse)
        SELECT {r}.prompt_set_id, {r}.prompt_id, {r}.kind, {_key(r)}, FALSE, {s}, {l}, {s} + {l},
          CASE WHEN {r}.status = 'leased' THEN {r}.lease_expires_at END{where}
        ON CONFLICT (prompt_id, kind, policy_id) DO UPDATE SET
          submitted = slots.submitted + excluded.submitted,
          leased = slots.leased + excluded.leased,
          taken = slots.taken + excluded.taken,
          next_lapse = CASE WHEN slots.next_lapse IS NULL OR excluded.next_lapse < slots.next_lapse
            THEN excluded.next_lapse ELSE slots.next_lapse END"""


def remove_task(r: str, guard: str = "") -> str:
    """SQL: uncount task row ``r`` (OLD) from its pair's row."""
    s, l = _counts(r)
    extra = f" AND {guard}" if guard else ""
    return f"""UPDATE slots SET submitted = submitted - {s}, leased = leased - {l}, taken = taken - {s} - {l},
          next_lapse = CASE WHEN leased - {l} <= 0 THEN NULL ELSE next_lapse END
        WHERE prompt_id = {r}.prompt_id AND kind = {r}.kind AND policy_id = {_key(r)}{extra}"""


def _counted(r: str) -> str:
    return f"{r}.kind IN {SLOT_KINDS} AND {r}.status IN {SLOT_STATES}"


def _task_changed(sqlite: bool) -> str:
    ne = "IS NOT" if sqlite else "IS DISTINCT FROM"
    return " OR ".join(
        f"OLD.{c} {ne} NEW.{c}" for c in ("status", "lease_expires_at", "kind", "prompt_id", "policy_id")
    )


def _open(r: str) -> str:
    return (
        f"(CASE WHEN {r}.served AND {r}.taken < (SELECT overlap FROM prompt_sets WHERE id = {r}.prompt_set_id) "
        "THEN 1 ELSE 0 END)"
    )


def _served(r: str) -> str:
    return f"(CASE WHEN {r}.served THEN 1 ELSE 0 END)"


def add_totals(set_id: str, kind: str, policy: str, served: str, open_: str) -> str:
    """SQL: add (served, open) to the totals row of (set, kind, policy), if the set exists."""
    return f"""INSERT INTO slot_totals (prompt_set_id, kind, policy_id, served, open)
        SELECT ps.id, {kind}, {policy}, {served}, {open_} FROM prompt_sets ps WHERE ps.id = {set_id}
        ON CONFLICT (prompt_set_id, kind, policy_id) DO UPDATE SET
          served = slot_totals.served + excluded.served, open = slot_totals.open + excluded.open"""


def slot_totals_delta() -> str:
    """SQL (OLD and NEW of one slots row; use 0 rows' values for a missing side)."""
    return add_totals(
        "NEW.prompt_set_id", "NEW.kind", "NEW.policy_id",
        f"{_served('NEW')} - {_served('OLD')}", f"{_open('NEW')} - {_open('OLD')}",
    )


RECOUNT_OPEN = """UPDATE slot_totals SET open = (SELECT count(*) FROM slots s
      WHERE s.prompt_set_id = slot_totals.prompt_set_id AND s.kind = slot_totals.kind
        AND s.policy_id = slot_totals.policy_id AND s.served AND s.taken < NEW.overlap)
    WHERE prompt_set_id = NEW.id AND kind IN ('rank', 'demonstrate')"""


TRIGGERS = (
    "slots_task_ins", "slots_task_upd", "slots_task_del",
    "slots_completion_ins", "slots_completion_upd", "slots_completion_del",
    "slots_policy_deploy", "slots_prompt_ins", "slots_prompt_upd", "slots_set_k",
    "totals_slot_ins", "totals_slot_upd", "totals_slot_del", "totals_prompt_ins", "totals_prompt_upd",
    "totals_prompt_del", "totals_set_overlap",
)
FUNCTIONS = ("slots_task_change", "slots_completion_change", "slots_policy_change",
             "slots_prompt_change", "slots_set_change", "totals_slot_change", "totals_prompt_change",
             "totals_set_change")


def _sqlite_triggers() -> list[str]:
    def trig(name: str, event: str, when: str, body: list[str]) -> str:
        w = f" WHEN {when}" if when else ""
        return f"CREATE TRIGGER {name} AFTER {event}{w} BEGIN\n" + ";\n".join(body) + ";\nEND"

    completion = lambda r: refresh_rank(f"p.id = {r}.prompt_id")  # noqa: E731
    return [
        trig("slots_task_ins", "INSERT ON tasks", _counted("NEW"), [add_task("NEW")]),
        trig("slots_task_del", "DELETE ON tasks", _counted("OLD"), [remove_task("OLD")]),
        trig(
            "slots_task_upd", "UPDATE OF status, lease_expires_at, kind, prompt_id, policy_id ON tasks",
            _task_changed(True),
            [remove_task("OLD", _counted("OLD")), add_task("NEW", _counted("NEW"))],
        ),
        trig("slots_completion_ins", "INSERT ON completions", "", completion("NEW")),
        trig("slots_completion_upd", "UPDATE OF status, policy_id, prompt_id ON completions", "", completion("NEW")),
        trig("slots_completion_del", "DELETE ON completions", "", completion("OLD")),
        trig(
            "slots_policy_deploy", "UPDATE OF deployed ON policies", "OLD.deployed IS NOT NEW.deployed",
            refresh_rank("p.id IN (SELECT prompt_id FROM completions WHERE policy_id = NEW.id)"),
        ),
        trig("slots_prompt_ins", "INSERT ON prompts", "NEW.wants_demonstration", refresh_demonstrate("p.id = NEW.id")),
        trig(
            "slots_prompt_upd", "UPDATE OF is_gold, wants_demonstration ON prompts",
            "OLD.is_gold IS NOT NEW.is_gold OR OLD.wants_demonstration IS NOT NEW.wants_demonstration",
            refresh_rank("p.id = NEW.id") + refresh_demonstrate("p.id = NEW.id"),
        ),
        trig("slots_set_k", "UPDATE OF k ON prompt_sets", "OLD.k IS NOT NEW.k", refresh_rank("p.prompt_set_id = NEW.id")),
        trig("totals_slot_ins", "INSERT ON slots", "NEW.served",
             [add_totals("NEW.prompt_set_id", "NEW.kind", "NEW.policy_id", "1", _open("NEW"))]),
        trig("totals_slot_del", "DELETE ON slots", "OLD.served",
             [add_totals("OLD.prompt_set_id", "OLD.kind", "OLD.policy_id", "-1", f"-{_open('OLD')}")]),
        trig("totals_slot_upd", "UPDATE OF served, taken ON slots",
             f"{_served('NEW')} <> {_served('OLD')} OR {_open('NEW')} <> {_open('OLD')}", [slot_totals_delta()]),
        trig("totals_prompt_ins", "INSERT ON prompts", "NOT NEW.is_gold",
             [add_totals("NEW.prompt_set_id", "'prompts'", "0", "1", "0")]),
        trig("totals_prompt_del", "DELETE ON prompts", "NOT OLD.is_gold",
             [add_totals("OLD.prompt_set_id", "'prompts'", "0", "-1", "0")]),
        trig("totals_prompt_upd", "UPDATE OF is_gold ON prompts", "OLD.is_gold IS NOT NEW.is_gold",
             [add_totals("NEW.prompt_set_id", "'prompts'", "0", "CASE WHEN NEW.is_gold THEN -1 ELSE 1 END", "0")]),
        trig("totals_set_overlap", "UPDATE OF overlap ON prompt_sets", "OLD.overlap IS NOT NEW.overlap", [RECOUNT_OPEN]),
    ]


def _pg_function(name: str, body: list[str]) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\nBEGIN\n"
        + "\n".join(body)
        + "\nRETURN NULL;\nEND\n$fn$"
    )


def _pg_triggers() -> list[str]:
    def stmts(sql: list[str]) -> list[str]:
        return [s + ";" for s in sql]

    task_fn = _pg_function("slots_task_change", [
        f"IF TG_OP = 'UPDATE' AND NOT ({_task_changed(False)}) THEN RETURN NULL; END IF;",
        f"IF TG_OP IN ('UPDATE', 'DELETE') AND {_counted('OLD')} THEN {remove_task('OLD')}; END IF;",
        f"IF TG_OP IN ('UPDATE', 'INSERT') AND {_counted('NEW')} THEN {add_task('NEW')}; END IF;",
    ])
    # Statement-level with a transition table: a sampler batch of K x n completions
    # refreshes each prompt once.
    completion_fn = _pg_function(
        "slots_completion_change", stmts(refresh_rank("p.id IN (SELECT prompt_id FROM changed)"))
    )
    policy_fn = _pg_function(
        "slots_policy_change",
        stmts(refresh_rank("p.id IN (SELECT prompt_id FROM completions WHERE policy_id = NEW.id)")),
    )
    prompt_fn = _pg_function("slots_prompt_change", stmts(refresh_rank("p.id = NEW.id") + refresh_demonstrate("p.id = NEW.id")))
    set_fn = _pg_function("slots_set_change", stmts(refresh_rank("p.prompt_set_id = NEW.id")))
    totals_slot_fn = _pg_function("totals_slot_change", [
        "IF TG_OP = 'INSERT' THEN "
        + add_totals("NEW.prompt_set_id", "NEW.kind", "NEW.policy_id", _served("NEW"), _open("NEW")) + "; "
        "ELSIF TG_OP = 'DELETE' THEN "
        + add_totals("OLD.prompt_set_id", "OLD.kind", "OLD.policy_id", f"-{_served('OLD')}", f"-{_open('OLD')}") + "; "
        f"ELSIF {_served('NEW')} <> {_served('OLD')} OR {_open('NEW')} <> {_open('OLD')} THEN "
        + slot_totals_delta() + "; END IF;",
    ])
    totals_prompt_fn = _pg_function("totals_prompt_change", [
        "IF TG_OP = 'INSERT' AND NOT NEW.is_gold THEN "
        + add_totals("NEW.prompt_set_id", "'prompts'", "0", "1", "0") + "; "
        "ELSIF TG_OP = 'DELETE' AND NOT OLD.is_gold THEN "
        + add_totals("OLD.prompt_set_id", "'prompts'", "0", "-1", "0") + "; "
        "ELSIF TG_OP = 'UPDATE' AND OLD.is_gold IS DISTINCT FROM NEW.is_gold THEN "
        + add_totals("NEW.prompt_set_id", "'prompts'", "0", "CASE WHEN NEW.is_gold THEN -1 ELSE 1 END", "0")
        + "; END IF;",
    ])
    totals_set_fn = _pg_function("totals_set_change", [RECOUNT_OPEN + ";"])
    return [
        task_fn, completion_fn, policy_fn, prompt_fn, set_fn, totals_slot_fn, totals_prompt_fn, totals_set_fn,
        # deferred to commit: the shared totals row is locked last and briefly
        "CREATE CONSTRAINT TRIGGER totals_slot_ins AFTER INSERT ON slots DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION totals_slot_change()",
        "CREATE CONSTRAINT TRIGGER totals_slot_upd AFTER UPDATE OF served, taken ON slots DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION totals_slot_change()",
        "CREATE CONSTRAINT TRIGGER totals_slot_del AFTER DELETE ON slots DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION totals_slot_change()",
        "CREATE TRIGGER totals_prompt_ins AFTER INSERT ON prompts FOR EACH ROW EXECUTE FUNCTION totals_prompt_change()",
        "CREATE TRIGGER totals_prompt_upd AFTER UPDATE OF is_gold ON prompts FOR EACH ROW "
        "EXECUTE FUNCTION totals_prompt_change()",
        "CREATE TRIGGER totals_prompt_del AFTER DELETE ON prompts FOR EACH ROW EXECUTE FUNCTION totals_prompt_change()",
        "CREATE TRIGGER totals_set_overlap AFTER UPDATE OF overlap ON prompt_sets FOR EACH ROW "
        "WHEN (OLD.overlap IS DISTINCT FROM NEW.overlap) EXECUTE FUNCTION totals_set_change()",
        "CREATE TRIGGER slots_task_ins AFTER INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION slots_task_change()",
        "CREATE TRIGGER slots_task_upd AFTER UPDATE OF status, lease_expires_at, kind, prompt_id, policy_id ON tasks "
        "FOR EACH ROW EXECUTE FUNCTION slots_task_change()",
        "CREATE TRIGGER slots_task_del AFTER DELETE ON tasks FOR EACH ROW EXECUTE FUNCTION slots_task_change()",
        "CREATE TRIGGER slots_completion_ins AFTER INSERT ON completions REFERENCING NEW TABLE AS changed "
        "FOR EACH STATEMENT EXECUTE FUNCTION slots_completion_change()",
        "CREATE TRIGGER slots_completion_upd AFTER UPDATE ON completions REFERENCING NEW TABLE AS changed "
        "FOR EACH STATEMENT EXECUTE FUNCTION slots_completion_change()",
        "CREATE TRIGGER slots_completion_del AFTER DELETE ON completions REFERENCING OLD TABLE AS changed "
        "FOR EACH STATEMENT EXECUTE FUNCTION slots_completion_change()",
        "CREATE TRIGGER slots_policy_deploy AFTER UPDATE OF deployed ON policies FOR EACH ROW "
        "WHEN (OLD.deployed IS DISTINCT FROM NEW.deployed) EXECUTE FUNCTION slots_policy_change()",
        "CREATE TRIGGER slots_prompt_ins AFTER INSERT ON prompts FOR EACH ROW WHEN (NEW.wants_demonstration) "
        "EXECUTE FUNCTION slots_prompt_change()",
        "CREATE TRIGGER slots_prompt_upd AFTER UPDATE OF is_gold, wants_demonstration ON prompts FOR EACH ROW "
        "WHEN (OLD.is_gold IS DISTINCT FROM NEW.is_gold OR OLD.wants_demonstration IS DISTINCT FROM NEW.wants_demonstration) "
        "EXECUTE FUNCTION slots_prompt_change()",
        "CREATE TRIGGER slots_set_k AFTER UPDATE OF k ON prompt_sets FOR EACH ROW WHEN (OLD.k IS DISTINCT FROM NEW.k) "
        "EXECUTE FUNCTION slots_set_change()",
    ]


def create_triggers(bind: sa.Connection) -> None:
    for sql in _sqlite_triggers() if bind.dialect.name == "sqlite" else _pg_triggers():
        bind.exec_driver_sql(sql)


def drop_triggers(bind: sa.Connection) -> None:
    pg = bind.dialect.name == "postgresql"
    tables = {"task": "tasks", "completion": "completions", "policy": "policies", "prompt": "prompts",
              "set": "prompt_sets", "slot": "slots"}
    for name in TRIGGERS:
        table = tables[name.split("_")[1]]
        bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if pg else ""))
    if pg:
        for fn in FUNCTIONS:
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {fn}()")


def backfill(bind: sa.Connection) -> None:
    """Fill ``slots`` from the existing tasks, completions and prompts."""
    bind.exec_driver_sql(
        f"""INSERT INTO slots (prompt_set_id, prompt_id, kind, policy_id, served, submitted, leased, taken, next_lapse)
        SELECT min(t.prompt_set_id), t.prompt_id, t.kind, {_key('t')}, FALSE,
          sum(CASE WHEN t.status = 'submitted' THEN 1 ELSE 0 END),
          sum(CASE WHEN t.status = 'leased' THEN 1 ELSE 0 END), count(*),
          min(CASE WHEN t.status = 'leased' THEN t.lease_expires_at END)
        FROM tasks t WHERE {_counted('t')}
        GROUP BY t.prompt_id, t.kind, {_key('t')}"""
    )
    for sql in refresh_rank("TRUE") + refresh_demonstrate("TRUE"):
        bind.exec_driver_sql(sql)
    bind.exec_driver_sql(
        """INSERT INTO slot_totals (prompt_set_id, kind, policy_id, served, open)
        SELECT s.prompt_set_id, s.kind, s.policy_id, count(*),
          sum(CASE WHEN s.taken < ps.overlap THEN 1 ELSE 0 END)
        FROM slots s JOIN prompt_sets ps ON ps.id = s.prompt_set_id WHERE s.served
        GROUP BY s.prompt_set_id, s.kind, s.policy_id"""
    )
    bind.exec_driver_sql(
        """INSERT INTO slot_totals (prompt_set_id, kind, policy_id, served, open)
        SELECT p.prompt_set_id, 'prompts', 0, count(*), 0 FROM prompts p WHERE NOT p.is_gold
        GROUP BY p.prompt_set_id"""
    )


def upgrade() -> None:
    op.create_table(
        "slots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_set_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("served", sa.Boolean(), nullable=False),
        sa.Column("submitted", sa.Integer(), nullable=False),
        sa.Column("leased", sa.Integer(), nullable=False),
        sa.Column("taken", sa.Integer(), nullable=False),
        sa.Column("next_lapse", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_slots_prompt_id_prompts"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["prompt_set_id"], ["prompt_sets.id"], name=op.f("fk_slots_prompt_set_id_prompt_sets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slots")),
        sa.UniqueConstraint("prompt_id", "kind", "policy_id", name="uq_slots_pair"),
    )
    op.create_table(
        "slot_totals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_set_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("served", sa.Integer(), nullable=False),
        sa.Column("open", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_set_id"], ["prompt_sets.id"], name=op.f("fk_slot_totals_prompt_set_id_prompt_sets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slot_totals")),
        sa.UniqueConstraint("prompt_set_id", "kind", "policy_id", name="uq_slot_totals_key"),
    )
    op.create_index("ix_slots_claim", "slots", ["prompt_set_id", "kind", "served", sa.text("taken DESC"), "prompt_id"])
    op.create_index("ix_slots_lapse", "slots", ["prompt_set_id", "next_lapse"])
    op.create_index("ix_tasks_set_status_lease", "tasks", ["prompt_set_id", "status", "lease_expires_at"])
    bind = op.get_bind()
    backfill(bind)
    create_triggers(bind)


def downgrade() -> None:
    drop_triggers(op.get_bind())
    op.drop_index("ix_tasks_set_status_lease", table_name="tasks")
    op.drop_table("slot_totals")
    op.drop_table("slots")
