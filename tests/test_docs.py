"""The documentation: tutorials run as written, public symbols have docstrings, the CLI and
API references cover everything, and every page is in the site's navigation."""

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import yaml

import evoplastic

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
# tutorials that need more than 20 s (measured: custom_fitness 30 s; bandit 38 s of CPU)
SLOW_TUTORIALS = {"custom_fitness.md", "bandit.md"}


def tutorial_program(path: Path) -> str:
    """The ```python blocks of a markdown file in order, as one program whose line numbers
    are the file's (a traceback points at the tutorial's own line)."""
    code, inside = [], False
    for line in path.read_text().splitlines():
        if not inside and line.strip() == "```python":
            inside = True
            code.append("")
        elif inside and line.strip() == "```":
            inside = False
            code.append("")
        else:
            code.append(line if inside else "")
    return "\n".join(code)


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_there_are_tutorials_and_each_has_code():
    names = {p.name for p in TUTORIALS}
    assert {"custom_fitness.md", "oja.md", "hebbian_cartpole.md"} <= names
    for path in TUTORIALS:
        assert python_blocks(path), f"{path.name} has no ```python block"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.name in SLOW_TUTORIALS else [])
        for p in TUTORIALS
    ],
)
def test_tutorial_runs_as_written(path, tmp_path, monkeypatch):
    """A tutorial's code, run as written as one program in a fresh directory (in this
    process: what it writes lands in ``tmp_path``)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    program = compile(tutorial_program(path), str(path), "exec")
    exec(program, {"__name__": "__main__"})


def _api_modules() -> list[str]:
    """Every module an API reference page renders (``::: module`` lines)."""
    found = []
    for page in sorted((DOCS / "api").glob("*.md")):
        found += re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M)
    return found


def _public(module):
    """The public symbols of a module: its ``__all__``, else what it defines itself."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_")
            and (inspect.isfunction(v) or inspect.isclass(v))
            and v.__module__ == module.__name__
        ]
    return [(n, getattr(module, n)) for n in names]


def _has_doc(obj) -> bool:
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return False  # the signature a dataclass writes when it has no docstring
    return bool(doc.strip())


def _undocumented(owner: str, obj) -> list[str]:
    if inspect.ismodule(obj):
        return [] if _has_doc(obj) else [owner]
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return []  # constants and registries are described by their module
    missing = [] if _has_doc(obj) else [owner]
    if inspect.isclass(obj) and obj.__module__.startswith("evoplastic"):
        fields = getattr(obj, "__dataclass_fields__", {})
        for name, member in vars(obj).items():
            if name.startswith("_") or name in fields:
                continue
            fn = member.fget if isinstance(member, property) else member
            fn = getattr(fn, "__func__", fn)
            if inspect.isfunction(fn) and not (fn.__doc__ or "").strip():
                missing.append(f"{owner}.{name}")
    return missing


def test_every_public_symbol_has_a_docstring():
    modules = ["evoplastic", *_api_modules()]
    missing = []
    for name in dict.fromkeys(modules):
        module = importlib.import_module(name)
        if not _has_doc(module):
            missing.append(name)
        for symbol, obj in _public(module):
            missing += _undocumented(f"{name}.{symbol}", obj)
    assert not missing, "no docstring: " + ", ".join(sorted(set(missing)))


def test_api_reference_covers_the_public_modules():
    documented = set(_api_modules())
    public = {
        f"evoplastic.{n}" for n in evoplastic.__all__ if inspect.ismodule(getattr(evoplastic, n))
    }
    public |= {"evoplastic.loggers", "evoplastic.analysis.distill", "evoplastic.analysis.plots"}
    assert public <= documented | {"evoplastic.analysis"}, public - documented
    assert "evoplastic" in documented


def _cli_hook():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks/cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_documents_every_command():
    from evoplastic.cli import cli

    hook = _cli_hook()
    page = (DOCS / "cli.md").read_text()
    assert hook.MARKER in page
    text = hook.on_page_markdown(page, None, None, None)
    names = [name for name, _ in hook.commands()]
    for expected in ("run", "resume", "eval", "plot", "distill", "report", "jobs", "jobs stop"):
        assert f"evoplastic {expected}" in names
    assert len(names) == len(cli.commands) + len(cli.commands["jobs"].commands)
    for name, command in hook.commands():
        assert f"## {name}\n" in text
        assert (command.help or "").strip().splitlines()[0] in text, name
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in text, (name, opt)


def test_config_reference_documents_every_field():
    import dataclasses
    import typing

    from evoplastic.config import Config

    spec = importlib.util.spec_from_file_location(
        "config_reference", DOCS / "hooks/config_reference.py"
    )
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (DOCS / "config.md").read_text()
    assert hook.MARKER in page
    text = hook.on_page_markdown(page, None, None, None)
    paths = [path for path, _ in hook.sections()]
    assert {"strategy", "meta.gradient", "ray", "evaluation", "test"} <= set(paths)
    for path, cls in hook.sections():
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, (path, f.name)
    hints = typing.get_type_hints(Config)
    assert "| `population_size` | int | `16` |" in text  # a field with its type and default
    assert dataclasses.is_dataclass(hints["meta"])


def _nav_pages(items) -> list[str]:
    out = []
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == nav, (pages - nav, nav - pages)
    for required in ("quickstart.md", "concepts.md", "cli.md", "results.md", "architecture.md"):
        assert required in nav
