"""The repository's promises: README commands = CI commands, environment.yml = pyproject, layout, layers, CLI."""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.conftest import REPO


def readme_commands() -> list[str]:
    """The README's first fenced block: the install command first, the test command last (the demo between)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text[:text.index(block.group(0))].count("\n") < 15, "the install/test block must open the README"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    return [lines[0], lines[-1]]


def test_ci_runs_exactly_the_readme_commands():
    install, test = readme_commands()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert install in ci_lines and ci_lines[-1] == test
    assert ci_lines.index(install) < len(ci_lines) - 1
    assert any("python3 -m venv" in line for line in ci_lines)
    assert any("HF_HUB_OFFLINE=1" in line for line in ci_lines)


def test_readme_first_screen_says_what_shows_and_links():
    """What the suite is, a picture of what the demo produces, the three commands with their measured times on
    2 cores, and the manual: all within the first screen; every file it links exists."""
    text = (REPO / "README.md").read_text()
    screen = "\n".join(text.splitlines()[:40])
    assert "SyllableLM" in screen.splitlines()[0] and re.search(r"!\[[^]]+\]\(docs/[\w.]+\.png\)", screen)
    assert "docs/manual.md" in screen
    for command in readme_commands() + ["syllablelm demo --workdir runs/demo"]:
        row = [line for line in screen.splitlines() if line.startswith("|") and f"`{command}`" in line]
        assert row and re.search(r"\| (about )?\d+(\.\d+)? (s|min)[^|]*\|\s*$", row[0]), command
    assert "a few minutes" not in text and "TIME_" not in text
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert (REPO / link).exists(), link


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = (REPO / "environment.yml").read_text()
    listed = re.findall(r'^\s+- "(.+)"$', env, re.M)
    assert listed == wanted
    assert "python=3.11" in env


def test_required_layout_exists():
    for name in ("syllablelm", "lightning_modules", "datamodules", "callbacks", "experiments", "tests",
                 "benchmarks", "environment.yml", "README.md", "pyproject.toml", ".ci/run"):
        assert (REPO / name).exists(), name


PACKAGES = ("syllablelm", "datamodules", "lightning_modules", "callbacks", "experiments")


def _lint_imports(root, env=None) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter, a dev dependency) is not installed"
    return subprocess.run([exe, "--no-cache"], cwd=root, capture_output=True, text=True, env=env, timeout=300)


def test_layer_contracts_hold():
    """pyproject's [tool.importlinter] contracts (layers; the core never imports Lightning), indirect imports
    included."""
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    assert "Contracts: 3 kept, 0 broken" in result.stdout


def test_a_core_package_reaching_up_breaks_the_core_layers(tmp_path):
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "pretrained"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "syllablelm" / "models" / "encoder.py", "a") as f:  # a network reaching up to its loader
        f.write("\n\ndef _late():\n    from syllablelm.checkpoints import load_backbone  # noqa\n")
    result = _lint_imports(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0 and "syllablelm.models.encoder -> syllablelm.checkpoints" in result.stdout


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the project modules it imports, every import statement counted (inside functions too)."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {m for m in (f"{node.module}.{a.name}" for a in node.names) if m in modules}
                deps |= {node.module} if node.module in modules else set()
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_core_has_no_import_cycle():
    """Not between modules, not through a package's ``__init__``, not through an import inside a function."""
    graph = _import_graph("syllablelm")
    assert len(graph) > 40 and sum(map(len, graph.values())) > 60
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself


def test_an_upward_import_breaks_the_contracts(tmp_path):
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "pretrained"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "syllablelm" / "audio" / "frames.py", "a") as f:  # the core reaching up
        f.write("\nfrom datamodules.manifest import build_manifest  # noqa\n")
    result = _lint_imports(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0 and "syllablelm.audio.frames -> datamodules.manifest" in result.stdout


def _private_imports() -> list[str]:
    """``from <project module> import _name`` and ``<imported project module>._name`` across modules."""
    found = []
    for package in (*PACKAGES, "benchmarks"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            modules = {}  # local name -> project module imported as such
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                        and node.module.split(".")[0] in PACKAGES:
                    found += [f"{path.relative_to(REPO)}: from {node.module} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    modules.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
                elif isinstance(node, ast.ImportFrom) and node.level > 0:
                    found += [f"{path.relative_to(REPO)}: from {'.' * node.level}{node.module or ''} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                elif isinstance(node, ast.Import):
                    modules.update({a.asname or a.name: a.name for a in node.names
                                    if a.name.split(".")[0] in PACKAGES})
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id in modules and node.attr.startswith("_") and not node.attr.startswith("__"):
                    found.append(f"{path.relative_to(REPO)}: {node.value.id}.{node.attr}")
    return found


def test_modules_do_not_reach_into_each_others_internals():
    assert _private_imports() == []


def test_console_script_lists_commands():
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    for command in ("fit", "validate", "test", "predict", "synth"):
        assert re.search(rf"^\s+{command}\b", out, re.M), command
    bad = subprocess.run([sys.executable, "-m", "experiments.cli", "nonsense"], capture_output=True, text=True,
                         cwd=REPO)
    assert bad.returncode == 2 and "unknown command 'nonsense'" in bad.stderr


def test_lint_is_clean():
    """ruff with the rules of pyproject's [tool.ruff] (pyflakes, pycodestyle, import order, bugbear): CI's lint."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
