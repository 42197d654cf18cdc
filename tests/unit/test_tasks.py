"""Task names, registration checks and argument checks: nothing here touches the database."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest

import errand
from errand.errors import ArgumentsError, ConfigurationError, ErrandError, SerializationError
from errand.tasks import default_name


def module_level_function() -> None:
    pass


class Holder:
    def method(self) -> None:
        pass


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "x.db"


@pytest.fixture
def app(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[errand.App]:
    monkeypatch.delenv("ERRAND_CHANNELS", raising=False)
    monkeypatch.delenv("ERRAND_NO_DELAY", raising=False)
    application = errand.App("sqlite:///" + str(db_path))
    yield application
    assert not db_path.exists(), "a unit test opened the database"
    application.close()


# -- default_name ----------------------------------------------------------------------

def test_default_name_is_module_and_qualname() -> None:
    assert default_name(module_level_function) == f"{__name__}.module_level_function"
    assert default_name(Holder.method) == f"{__name__}.Holder.method"


def _script_function() -> Any:
    def fn() -> None:
        pass
    fn.__module__ = "__main__"
    fn.__qualname__ = "fn"
    return fn


def test_default_name_of_a_script_run_with_dash_m_uses_its_import_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = ModuleSpec("myproject.jobs", None)
    main.__file__ = "/srv/myproject/jobs.py"
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert default_name(_script_function()) == "myproject.jobs.fn"


def test_default_name_of_a_script_run_by_path_uses_its_file_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = None
    main.__file__ = "/srv/tools/nightly.py"
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert default_name(_script_function()) == "nightly.fn"


def test_default_name_of_an_interactive_main_stays_main(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert default_name(_script_function()) == "__main__.fn"


# -- registration ----------------------------------------------------------------------

def test_bare_decorator_uses_the_default_name(app: errand.App) -> None:
    @app.task
    def resize(path: str, size: tuple[int, int] = (50, 50)) -> str:
        return f"{path}@{size}"

    assert resize.name == f"{__name__}.test_bare_decorator_uses_the_default_name.<locals>.resize"
    assert app.tasks[resize.name] is resize
    assert app.get_task(resize.name) is resize


def test_calling_a_task_runs_the_function_now(app: errand.App) -> None:
    @app.task(name="math.add")
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(2, b=3) == 5
    assert add.__name__ == "add"


def test_description_defaults_to_the_first_docstring_line(app: errand.App) -> None:
    @app.task(name="documented")
    def documented() -> None:
        """Send the weekly digest.

        More words.
        """

    @app.task(name="undocumented")
    def undocumented() -> None:
        pass

    assert documented.default_description == "Send the weekly digest."
    assert undocumented.default_description == "undocumented"


def test_a_taken_name_is_refused(app: errand.App) -> None:
    @app.task(name="mail.send")
    def first() -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"'mail\.send' is already registered"):
        @app.task(name="mail.send")
        def second() -> None:
            pass
    assert app.tasks["mail.send"] is first


@pytest.mark.parametrize(("defaults", "fragment"), [
    ({"priority": "high"}, "priority must be an int"),
    ({"channel": "mail"}, "channel must be 'root'"),
    ({"connection": None}, "unknown option 'connection'"),
    ({"max_retrys": 3}, "unknown option 'max_retrys'"),
])
def test_bad_task_defaults_are_refused_at_registration(app: errand.App, defaults: dict[str, Any],
                                                       fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        app.task(name="bad", **defaults)(module_level_function)
    assert "bad" not in app.tasks


def test_retry_on_must_list_exception_classes(app: errand.App) -> None:
    with pytest.raises(ConfigurationError, match="retry_on must list exception classes"):
        app.task(name="bad", retry_on=("OSError",))(module_level_function)  # type: ignore[arg-type]


def test_unknown_task_name_lists_the_registered_ones(app: errand.App) -> None:
    app.task(name="mail.send")(module_level_function)
    with pytest.raises(errand.errors.UnknownTaskError, match=r"'mail\.sned'.*mail\.send"):
        app.get_task("mail.sned")


# -- check_arguments -------------------------------------------------------------------

@pytest.fixture
def send_email(app: errand.App) -> Any:
    @app.task(name="mail.send")
    def send_email(to: str, subject: str, body: str = "") -> None:
        pass
    return send_email


@pytest.mark.parametrize(("args", "kwargs"), [
    (("a@x",), {"subject": "Hi"}),
    (("a@x", "Hi", "body"), {}),
    ((), {"to": "a@x", "subject": "Hi", "body": ""}),
])
def test_check_arguments_accepts_calls_the_function_accepts(
        send_email: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    send_email.check_arguments(args, kwargs)


@pytest.mark.parametrize(("args", "kwargs", "fragment"), [
    (("a@x",), {}, "missing a required argument: 'subject'"),
    (("a@x", "Hi", "body", "extra"), {}, "too many positional arguments"),
    (("a@x", "Hi"), {"cc": "b@x"}, "unexpected keyword argument 'cc'"),
    (("a@x", "Hi"), {"to": "b@x"}, "multiple values for argument 'to'"),
])
def test_check_arguments_refuses_a_wrong_call_naming_the_task(
        send_email: Any, args: tuple[Any, ...], kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ArgumentsError) as caught:
        send_email.check_arguments(args, kwargs)
    assert str(caught.value).startswith("mail.send: ")
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ErrandError)
    assert isinstance(caught.value, TypeError)


def test_check_arguments_of_a_catch_all_function(app: errand.App) -> None:
    @app.task(name="anything")
    def anything(*args: Any, **kwargs: Any) -> None:
        pass

    anything.check_arguments((1, 2, 3), {"x": 1})
    with pytest.raises(ArgumentsError):
        app.task(name="nothing")(module_level_function).check_arguments((1,), {})


def test_delay_with_wrong_arguments_fails_before_the_database(send_email: Any) -> None:
    with pytest.raises(ArgumentsError, match=r"^mail\.send: .*'subject'"):
        send_email.delay("a@x")


def test_delay_with_an_unstorable_argument_fails_before_the_database(send_email: Any) -> None:
    with pytest.raises(SerializationError, match=r"^kwargs\['subject'\] is a builtins\.set"):
        send_email.delay("a@x", subject={"Hi"})


def test_with_delay_refuses_an_unknown_option_at_once(send_email: Any) -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'priorty'"):
        send_email.with_delay(priorty=1)


def test_delay_many_refuses_a_malformed_item_naming_it(send_email: Any) -> None:
    with pytest.raises(ArgumentsError, match="item 1 is"):
        send_email.delay_many([(("a@x",), {"subject": "1"}), ("b@x", "2")])
