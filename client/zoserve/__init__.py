"""zoserve: the Python SDK for the zoserve black-box optimization service.

    >>> import zoserve
    >>> with zoserve.Client("http://127.0.0.1:8000") as client:
    ...     job = client.jobs.create({"algorithm": "zo-sgd",
    ...                               "objective": {"kind": "builtin", "function": "rosenbrock", "dim": 20},
    ...                               "budget": {"max_steps": 400}})
    ...     job = job.wait(progress=True)
"""

from ._async import AsyncClient, AsyncJob
from ._errors import (
    APIError, BadRequest, Conflict, JobFailed, NotFound, RateLimited, ServerError, TransportError, Unauthorized,
    Unprocessable, ZoserveError,
)
from ._sync import Client, Job
from .models.events import ErrorEvent, ProgressEvent, QueryEvent, ResultEvent, StatusEvent
from .models.jobs import JobStatus

__version__ = "0.1.0"
__all__ = [
    "APIError", "AsyncClient", "AsyncJob", "BadRequest", "Client", "Conflict", "ErrorEvent", "Job", "JobFailed",
    "JobStatus", "NotFound", "ProgressEvent", "QueryEvent", "RateLimited", "ResultEvent", "ServerError", "StatusEvent",
    "TransportError", "Unauthorized", "Unprocessable", "ZoserveError", "__version__",
]
