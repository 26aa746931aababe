"""The documentation: a README a newcomer can use, reference pages that say what the code does, a site that builds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testkit import REPO

ROOT = REPO
README = ROOT / "README.md"
GENERATOR = ROOT / "docs" / "gen_reference.py"


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False
    )


def test_the_reference_pages_say_what_the_code_says() -> None:
    result = generate("--check")
    assert result.returncode == 0, result.stderr


def test_a_reference_page_left_behind_by_the_code_fails_the_check(tmp_path: Path) -> None:
    pages = tmp_path / "reference"
    shutil.copytree(ROOT / "docs" / "reference", pages)
    page = pages / "configuration.md"
    # A key whose default changed in the code but not on the page.
    page.write_text(
        page.read_text().replace(
            "| `stability_wait_s` | float (≥ 0.0) | `1.0` |", "| `stability_wait_s` | float (≥ 0.0) | `5.0` |"
        )
    )
    result = generate("--check", "--pages", str(pages))
    assert result.returncode == 1
    assert "configuration.md" in result.stderr and "python docs/gen_reference.py" in result.stderr
    # Without --check the page is written back as the code says.
    assert generate("--pages", str(pages)).returncode == 0
    assert page.read_text() == (ROOT / "docs" / "reference" / "configuration.md").read_text()


def test_every_configuration_key_is_on_the_configuration_page_with_its_environment_name() -> None:
    from pydantic import BaseModel

    from drdaemon.config import Settings

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()

    def keys(model: type[BaseModel], path: list[str]) -> list[list[str]]:
        found: list[list[str]] = []
        for name, field in model.model_fields.items():
            sub = next(
                (
                    a
                    for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                    if hasattr(a, "model_fields")
                ),
                None,
            )
            found += keys(sub, [*path, name]) if sub is not None else [[*path, name]]
        return found

    for key in keys(Settings, []):
        env = "DRDAEMON_" + "__".join(part.upper() for part in key)
        assert f"`{env}`" in page, env


def test_the_readme_is_at_most_20_kb() -> None:
    assert README.stat().st_size <= 20 * 1024


def test_the_readme_gives_the_cpu_only_install_beside_the_two_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"^```sh\n(.*?)^```", text, flags=re.M | re.S)
    assert first_block is not None
    commands = first_block[1]
    assert "drdaemon run --config config.example.toml" in commands
    assert "--index-url https://download.pytorch.org/whl/cpu" in commands
    assert "bash .ci/run" in commands


def test_the_readme_says_which_engine_when_before_the_commands() -> None:
    text = README.read_text()
    engines = text.index("## Which engine when")
    assert engines < text.index("## Two commands")
    table = text[engines : text.index("## Two commands")]
    assert '`name = "pipeline"` (preset `detail`' in table
    assert '`name = "classical"`' in table and '`name = "net"`' in table


def test_every_relative_link_in_the_readme_and_the_docs_points_at_a_file() -> None:
    sources = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    for source in sources:
        text = re.sub(r"^```.*?^```", "", source.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#")[0]
            if not path or re.match(r"[a-z]+:", path):
                continue
            assert (source.parent / path).exists(), f"{source.relative_to(ROOT)}: {target}"


def test_the_site_builds_strictly_with_the_install_guide_in_it(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    deploy = (tmp_path / "site" / "how-to" / "deploy" / "index.html").read_text()
    for section in re.findall(r"^## (\d+\. .+)$", (ROOT / "deploy" / "README.md").read_text(), flags=re.M):
        number = section.split(".")[0]
        assert f'id="{number}-' in deploy, section
