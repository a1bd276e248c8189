"""All ORM models; importing this package registers every table on ``Base.metadata``."""

from app.models.conversations import ConversationNode, NodeSource
from app.models.evaluations import (
    CHOICES,
    CompareTask,
    ComparisonJudgment,
    Evaluation,
    EvaluationComparison,
    EvaluationSample,
)
from app.models.labeling import FLAGS, TASK_KINDS, Demonstration, Ranking, Slot, SlotTotals, SubmissionStatus, Task, TaskStatus
from app.models.policies import Completion, Policy, RewardModel
from app.models.prompts import DEFAULT_SAMPLING, SPLITS, Prompt, PromptSet, PromptSetStatus
from app.models.training import AuditLog, RunLog, RunMetric, TrainingRun, Worker
from app.models.users import ROLES, ApiToken, LoginFailure, User, UserSession
from app.models.webhooks import Webhook, WebhookDelivery

__all__ = [
    "CHOICES",
    "CompareTask",
    "ComparisonJudgment",
    "Evaluation",
    "EvaluationComparison",
    "EvaluationSample",
    "DEFAULT_SAMPLING",
    "FLAGS",
    "ROLES",
    "SPLITS",
    "TASK_KINDS",
    "ApiToken",
    "AuditLog",
    "Completion",
    "ConversationNode",
    "Demonstration",
    "LoginFailure",
    "NodeSource",
    "Policy",
    "Prompt",
    "PromptSet",
    "PromptSetStatus",
    "Ranking",
    "RewardModel",
    "RunLog",
    "RunMetric",
    "Slot",
    "SlotTotals",
    "SubmissionStatus",
    "Task",
    "TaskStatus",
    "TrainingRun",
    "User",
    "UserSession",
    "Webhook",
    "WebhookDelivery",
    "Worker",
]
