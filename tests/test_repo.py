"""The repository's promises: README commands = CI commands, environment.yml = pyproject, layout, CLI."""
import re
import subprocess
import sys

import tomllib

from tests.conftest import REPO


def readme_commands() -> list[str]:
    """The README's first fenced block: the install command first, the test command last (the demo between)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 200, "the install/test block must open the README"
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


def test_core_package_never_imports_lightning():
    offenders = [p.relative_to(REPO).as_posix() for p in (REPO / "syllablelm").rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+(pytorch_)?lightning", p.read_text(), re.M)]
    assert offenders == []


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
