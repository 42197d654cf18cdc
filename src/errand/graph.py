"""Job graphs: `Delayable`, `chain` and `group`, stored whole by one `delay()` on the top.

Nothing is stored until `delay()`; then every job of the graph goes to the database in one
transaction, those with parents in `wait_dependencies` until all their parents are done.
"""

from __future__ import annotations

import uuid as uuid_module
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self
from uuid import UUID

from typing_extensions import Unpack

from errand import options as opts
from errand.errors import ConfigurationError
from errand.handle import Job


@dataclass(frozen=True)
class GraphNode:
    """One job of a graph, ready to store: what to call, how, and after which jobs."""

    task: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    uuid: UUID
    depends_on: tuple[UUID, ...]


class GraphStore(Protocol):
    def submit_graph(self, nodes: Sequence[GraphNode]) -> list[Job[Any]]: ...


class TaskLike(Protocol):
    """What a graph needs of a task (errand.tasks.Task)."""

    name: str

    @property
    def app(self) -> GraphStore: ...

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None: ...


class Node:
    """Something that can wait for, or be waited for by, other nodes."""

    def heads(self) -> list[Delayable]:
        raise NotImplementedError

    def tails(self) -> list[Delayable]:
        raise NotImplementedError

    def on_done(self, *nodes: Node) -> Self:
        """Make `nodes` wait until this node's jobs are all done; returns this node."""
        for node in nodes:
            for tail in self.tails():
                for head in node.heads():
                    if tail is head:
                        raise ConfigurationError("a job cannot wait for itself")
                    tail.children.append(head)
                    head.parents.append(tail)
        return self

    def _store(self) -> list[Job[Any]]:
        members = _connected(self.heads())
        if any(head.parents for head in self.heads()):
            warnings.warn("delay() was called on a node that waits for others; call it on "
                          "the top of the graph (the whole graph is stored all the same)",
                          stacklevel=3)
        order = _topological(members)
        stores = {id(member.task.app) for member in order}
        if len(stores) > 1:
            raise ConfigurationError("every job of a graph must belong to the same App")
        jobs = order[0].task.app.submit_graph([member.node() for member in order])
        for member, job in zip(order, jobs, strict=True):
            member.job = job
        return jobs


class Delayable(Node):
    """A job not stored yet: `task.delayable(args...)`, then `.set(...)`, `.on_done(...)`."""

    def __init__(self, task: TaskLike, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        task.check_arguments(args, kwargs)
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.options: dict[str, Any] = {}
        self.uuid = uuid_module.uuid4()
        self.parents: list[Delayable] = []
        self.children: list[Delayable] = []
        self.job: Job[Any] | None = None

    def heads(self) -> list[Delayable]:
        return [self]

    def tails(self) -> list[Delayable]:
        return [self]

    def set(self, **options: Unpack[opts.JobOptions]) -> Self:
        """Options of `with_delay` for this job; returns the delayable."""
        opts.check(options)
        if "connection" in options:
            raise ConfigurationError("a graph is stored in its own transaction; "
                                     "connection= is not an option of a delayable")
        self.options.update(options)
        return self

    def node(self) -> GraphNode:
        if self.options.get("identity_key") and (self.parents or self.children):
            raise ConfigurationError(
                f"{self.task.name}: identity_key is not supported on jobs linked in a graph")
        return GraphNode(task=self.task, args=self.args, kwargs=self.kwargs,
                         options=self.options, uuid=self.uuid,
                         depends_on=tuple(dict.fromkeys(p.uuid for p in self.parents)))

    def delay(self) -> Job[Any]:
        """Store this job and every job linked to it, in one transaction."""
        self._store()
        assert self.job is not None
        return self.job

    def __repr__(self) -> str:
        return f"<Delayable {self.task.name}{'' if self.job is None else ' (stored)'}>"


class Group(Node):
    """Jobs that may run side by side; what waits for the group waits for all of them."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        if not nodes:
            raise ConfigurationError("a group needs at least one job")
        self.nodes = list(nodes)

    def heads(self) -> list[Delayable]:
        return [head for node in self.nodes for head in node.heads()]

    def tails(self) -> list[Delayable]:
        return [tail for node in self.nodes for tail in node.tails()]

    def delay(self) -> list[Job[Any]]:
        """Store every job linked to this node in one transaction; parents come first."""
        return self._store()


class Chain(Group):
    """Nodes that run one after the other: each waits for the one before."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        super().__init__(nodes)
        for before, after in zip(self.nodes, self.nodes[1:], strict=False):
            before.on_done(after)

    def heads(self) -> list[Delayable]:
        return self.nodes[0].heads()

    def tails(self) -> list[Delayable]:
        return self.nodes[-1].tails()


def group(*nodes: Node) -> Group:
    return Group(nodes)


def chain(*nodes: Node) -> Chain:
    return Chain(nodes)


def _connected(start: list[Delayable]) -> list[Delayable]:
    """Every delayable linked to `start`, in either direction."""
    seen: dict[int, Delayable] = {}
    todo = list(start)
    while todo:
        member = todo.pop()
        if id(member) in seen:
            continue
        if member.job is not None:
            raise ConfigurationError(f"{member!r} was already delayed")
        seen[id(member)] = member
        todo.extend(member.parents)
        todo.extend(member.children)
    return list(seen.values())


def _topological(members: list[Delayable]) -> list[Delayable]:
    """Parents before children (Kahn's algorithm); a cycle is refused."""
    waiting = {id(member): len(set(map(id, member.parents))) for member in members}
    ready = [member for member in members if waiting[id(member)] == 0]
    order: list[Delayable] = []
    while ready:
        member = ready.pop(0)
        order.append(member)
        for child in dict.fromkeys(member.children):
            waiting[id(child)] -= 1
            if waiting[id(child)] == 0:
                ready.append(child)
    if len(order) != len(members):
        raise ConfigurationError("the job graph has a cycle")
    return order
