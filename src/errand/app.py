"""`App`: the registry of tasks and the door to the application's job database."""

from __future__ import annotations

import os
import threading
import uuid as uuid_module
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, islice
from typing import Any, ParamSpec, TypeVar, overload
from uuid import UUID

from typing_extensions import Unpack

from errand import ops, serialization
from errand import options as opts
from errand.channels import parse_channels
from errand.errors import ConfigurationError, JobNotFound, PayloadTooLarge, UnknownTaskError
from errand.graph import GraphNode
from errand.handle import Job
from errand.inline import run_inline
from errand.jobs import NewJob, State
from errand.retry import encode_pattern
from errand.settings import Settings, no_delay_enabled
from errand.storage import Backend, open_backend
from errand.tasks import Call, Task, default_name

P = ParamSpec("P")
R = TypeVar("R")

StoreHook = Callable[[list[tuple[Task[Any, Any], NewJob]]], list[Job[Any]]]
SUBMIT_HOOKS: list[StoreHook] = []
"""Pushed by `errand.testing.trap_jobs`: the last one catches every job of the process
(every thread) before it reaches the database."""

_apps: weakref.WeakSet[App] = weakref.WeakSet()
_fork_hook_installed = False


def _forget_backends() -> None:
    """In a forked child, drop (without closing) the parent's connections and pool threads."""
    for app in list(_apps):
        app._backend = None
        app._lock = threading.Lock()


def _track(app: App) -> None:
    global _fork_hook_installed
    _apps.add(app)
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_forget_backends)
        _fork_hook_installed = True


class App:
    """Tasks of an application and the database their jobs live in.

    Nothing is opened until first used: the database URL comes from the argument, else
    `ERRAND_DATABASE_URL`, else `sqlite:///errand.db`; the schema is created on first use.
    """

    def __init__(self, database_url: str | None = None, *, channels: str | None = None,
                 context_keys: Iterable[str] | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._database_url = database_url
        self.channels = ops.Channels(lambda: self.backend, parse_channels(
            channels if channels is not None else self.settings.channels))
        self.context_keys = None if context_keys is None else frozenset(context_keys)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        _track(self)

    # -- the database ------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return self._database_url or self.settings.database_url

    def use_database(self, url: str) -> None:
        """Point the app at another database (the CLI's `--database-url`)."""
        self.close()
        self._database_url = url

    @property
    def backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = open_backend(self.database_url)
                backend = self._backend
        return backend

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; return the migration versions applied."""
        return self.backend.migrate()

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    # -- tasks -------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, *, name: str | None = None, retry_on: Iterable[type[BaseException]] = (),
             **defaults: Unpack[opts.TaskDefaults]) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
             retry_on: Iterable[type[BaseException]] = (), **defaults: Any) -> Any:
        """Register a function as a task: `@app.task` or `@app.task(name=..., priority=...)`."""
        def register(function: Callable[P, R]) -> Task[P, R]:
            if not callable(function):
                raise ConfigurationError(f"@app.task decorates a function, got {function!r}")
            task_name = name or default_name(function)
            if task_name in self.tasks:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            created: Task[P, R] = Task(self, function, task_name, defaults, tuple(retry_on))
            self.tasks[task_name] = created
            return created

        if fn is not None:
            return register(fn)
        return register

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTaskError(f"no task named {name!r} (registered: {known})") from None

    # -- jobs --------------------------------------------------------------------------

    def enqueue(self, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                **options: Unpack[opts.JobOptions]) -> Job[Any]:
        """Store a job for the task registered under `name`."""
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise ConfigurationError(f"args must be a list or tuple, got {args!r}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ConfigurationError(f"kwargs must be a dict, got {kwargs!r}")
        opts.check(options)
        task = self.get_task(name)
        return self.submit(task, [(tuple(args), dict(kwargs or {}))], options)[0]

    def job(self, uuid: UUID | str) -> Job[Any]:
        """The handle of an existing job."""
        key = uuid if isinstance(uuid, UUID) else ops.parse_uuid(uuid)
        row = self.backend.get_job(key)
        if row is None:
            raise JobNotFound(f"no job {key}")
        return Job(self, row)

    def jobs(self, state: State | str | None = None, channel: str | None = None,
             task: str | None = None, limit: int = 100) -> list[Job[Any]]:
        """Handles of stored jobs, newest first."""
        if state is not None and state not in set(State):
            raise ConfigurationError(
                f"unknown state {state!r}; states are {', '.join(s.value for s in State)}")
        rows = self.backend.list_jobs(None if state is None else State(state), channel, task,
                                      limit)
        return [Job(self, row) for row in rows]

    def submit(self, task: Task[Any, Any], calls: Sequence[Call],
               options: Mapping[str, Any]) -> list[Job[Any]]:
        """Store one job per call (or run them inline under ERRAND_NO_DELAY)."""
        resolved = opts.resolve(task.defaults, options)
        shared: dict[str, Any] = {}
        jobs = (self._new_job(task, args, kwargs, resolved, shared) for args, kwargs in calls)
        if (resolved.connection is None and resolved.identity_key is None
                and not SUBMIT_HOOKS and not no_delay_enabled()):
            # The first job is built before the database is opened (a bad `delay` never
            # opens it), the others while they are stored (see Backend.enqueue_alike). On
            # the caller's connection all are built first: a bad call never aborts the
            # caller's transaction.
            first = list(islice(jobs, 1))
            stored = self.backend.enqueue_alike(len(calls), chain(first, jobs))
            return [Job(self, row) for row in stored]
        return self._store([(task, job) for job in jobs], resolved.connection)

    def submit_graph(self, nodes: Sequence[GraphNode]) -> list[Job[Any]]:
        """Store a graph's jobs in one transaction; `nodes` come parents first."""
        entries = []
        for node in nodes:
            resolved = opts.resolve(node.task.defaults, node.options)
            entries.append((node.task, self._new_job(node.task, node.args, node.kwargs,
                                                     resolved, {}, node.uuid, node.depends_on)))
        return self._store(entries, None)

    def _store(self, entries: list[tuple[Task[Any, Any], NewJob]],
               connection: Any) -> list[Job[Any]]:
        if SUBMIT_HOOKS:
            return SUBMIT_HOOKS[-1](entries)
        if no_delay_enabled():
            return run_inline(entries)
        rows = self.backend.enqueue([new for _, new in entries], connection)
        return [Job(self, row) for row in rows]

    def _new_job(self, task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any],
                 resolved: opts.Resolved, shared: dict[str, Any], uuid: UUID | None = None,
                 depends_on: tuple[UUID, ...] = ()) -> NewJob:
        """A job of `task`. `shared` holds the fields that come from `resolved` alone, filled
        by the first job (after its arguments are checked, so errors keep their order) and
        reused by the other jobs of a batch: the context is encoded once, not per job."""
        task.check_arguments(args, kwargs)
        args_json, kwargs_json = serialization.encode_call(args, kwargs)
        if (len(args_json) + len(kwargs_json)) * 4 > self.settings.max_payload:
            self._check_size(task.name, args_json + kwargs_json)  # maybe over, in bytes
        if not shared:
            context = dict(resolved.context)
            if self.context_keys is not None:
                context = {k: v for k, v in context.items() if k in self.context_keys}
            shared.update(
                task=task.name, context=serialization.dumps(context, "context"),
                description=resolved.description or task.default_description,
                channel=resolved.channel, priority=resolved.priority,
                max_retries=resolved.max_retries,
                retry_pattern=encode_pattern(resolved.retry_pattern),
                timeout=resolved.timeout, eta_at=resolved.eta_at, eta_in=resolved.eta_in,
                identity_key=resolved.identity_key)
        return NewJob(uuid=uuid or uuid_module.uuid4(), args=args_json, kwargs=kwargs_json,
                      depends_on=depends_on, **shared)

    def _check_size(self, task: str, text: str) -> None:
        limit = self.settings.max_payload
        if len(text.encode()) > limit:
            raise PayloadTooLarge(
                f"the arguments of {task} take {len(text.encode()):,} bytes, over the "
                f"{limit:,}-byte limit (ERRAND_MAX_PAYLOAD); store big data elsewhere and "
                "pass a reference")

    def __repr__(self) -> str:
        return f"<errand.App {len(self.tasks)} tasks>"

