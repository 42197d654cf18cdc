"""`Task`: a registered function that can be called now or postponed as a job."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from typing_extensions import Unpack

from errand import options as opts
from errand.errors import ArgumentsError, ConfigurationError
from errand.graph import Delayable, GraphNode
from errand.handle import Job

P = ParamSpec("P")
R = TypeVar("R")

Call = tuple[Sequence[Any], Mapping[str, Any]]


class Submitter(Protocol):
    """What a task needs from its application: a way to store (or run) its calls."""

    def submit(self, task: Task[Any, Any], calls: Sequence[Call],
               options: Mapping[str, Any]) -> list[Job[Any]]: ...

    def submit_graph(self, nodes: Sequence[GraphNode]) -> list[Job[Any]]: ...


def default_name(fn: Callable[..., Any]) -> str:
    """`module.qualname`; a script's `__main__` gets its importable name, as a worker sees it."""
    module = fn.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif main is not None and getattr(main, "__file__", None):
            module = main.__file__.rsplit("/", 1)[-1].removesuffix(".py")  # type: ignore[union-attr]
    return f"{module}.{fn.__qualname__}"


MAX_SHAPES = 64
"""Accepted call shapes remembered per task (a task taking **kwargs may see many)."""


class Task(Generic[P, R]):
    """A function registered with an `App`.

    Calling the task runs the function now; `delay`, `with_delay(...)(...)` and
    `delay_many` store jobs for the workers instead.
    """

    def __init__(self, app: Submitter, fn: Callable[P, R], name: str,
                 defaults: Mapping[str, Any],
                 retry_on: tuple[type[BaseException], ...] = ()) -> None:
        opts.check(defaults, opts.TASK_DEFAULT_NAMES)
        for exc_type in retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(f"retry_on must list exception classes, got {exc_type!r}")
        self.app = app
        self.fn = fn
        self.name = name
        self.defaults = dict(defaults)
        self.retry_on = tuple(retry_on)
        self.signature = inspect.signature(fn)
        self._accepted_shapes: set[tuple[int, frozenset[str]]] = set()
        doc = inspect.getdoc(fn)
        self.default_description = doc.strip().splitlines()[0] if doc else name
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Store a job that calls this task with these arguments, with the task's defaults."""
        return self.app.submit(self, [(args, kwargs)], {})[0]

    def with_delay(self, **options: Unpack[opts.JobOptions]) -> Callable[P, Job[R]]:
        """`task.with_delay(priority=1, eta=60)(args...)`: delay with options for this call."""
        opts.check(options)

        def delayed(*args: P.args, **kwargs: P.kwargs) -> Job[R]:
            return self.app.submit(self, [(args, kwargs)], options)[0]

        return delayed

    def delay_many(self, calls: Iterable[Call],
                   **options: Unpack[opts.JobOptions]) -> list[Job[R]]:
        """Store one job per `(args, kwargs)` pair, all in one round trip."""
        opts.check(options)
        checked: list[Call] = []
        for index, call in enumerate(calls):
            if not (isinstance(call, (tuple, list)) and len(call) == 2
                    and isinstance(call[0], (tuple, list)) and isinstance(call[1], Mapping)):
                raise ArgumentsError(
                    f"delay_many takes (args, kwargs) pairs; item {index} is {call!r}")
            checked.append((tuple(call[0]), dict(call[1])))
        return self.app.submit(self, checked, options)

    def delayable(self, *args: P.args, **kwargs: P.kwargs) -> Delayable:
        """A job of this task not stored yet, to link into a graph (`on_done`, `chain`)."""
        return Delayable(self, tuple(args), dict(kwargs))

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Refuse a call the function could not accept, before anything is stored.

        Whether a call binds depends only on its number of positional arguments and its
        keyword names, so shapes that bound are remembered: binding cost more than all the
        other checks of a job."""
        shape = (len(args), frozenset(kwargs))
        if shape in self._accepted_shapes:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError(f"{self.name}: {exc}") from None
        if len(self._accepted_shapes) < MAX_SHAPES:
            self._accepted_shapes.add(shape)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
