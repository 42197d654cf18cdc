"""errand: a background job queue kept in your application's own database."""

from errand.app import App
from errand.context import JobContext, current_job
from errand.errors import (
    CancelJob,
    ErrandError,
    FailedJobError,
    RetryableJobError,
)
from errand.graph import Delayable, chain, group
from errand.handle import Attempt, Job
from errand.jobs import Outcome, State
from errand.tasks import Task

__version__ = "0.1.0"

__all__ = [
    "App",
    "Attempt",
    "CancelJob",
    "Delayable",
    "ErrandError",
    "FailedJobError",
    "Job",
    "JobContext",
    "Outcome",
    "RetryableJobError",
    "State",
    "Task",
    "__version__",
    "chain",
    "current_job",
    "group",
]
