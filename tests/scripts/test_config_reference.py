"""docs/configuration.md's reference is generated from shared/config.py: it fails here when someone changed a setting
and did not run `python -m scripts.config_reference`. A plain unit test: no MariaDB, Redis or model."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import config_reference
from scripts.config_reference import BEGIN, DOC, END, SECTIONS, generated, main, rewritten, variable_name
from shared.config import REPO_ROOT


def test_docs_configuration_is_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert rewritten(text) == text, "docs/configuration.md is stale: run `python -m scripts.config_reference`"


def test_every_setting_is_described_and_listed() -> None:
    text = generated()
    for section in SECTIONS:
        for name, field in section.settings.model_fields.items():
            assert field.description, f"{section.settings.__name__}.{name} has no description="
            assert f"| `{variable_name(section.settings, name)}` |" in text


def test_variable_names_follow_the_prefixes() -> None:
    names = {variable_name(s.settings, n) for s in SECTIONS for n in s.settings.model_fields}
    assert {"REDIS_URL", "OWNER_TOKEN_SECRET", "DIGITS_URL", "BENCH_DATABASE_URL", "FLOWER_MAX_TASKS"} <= names


def test_defaults_are_shown_as_a_reader_sets_them() -> None:
    text = generated()
    assert "| `REDIS_URL` | required |" in text
    assert "| `ROW_RETENTION_SECONDS` | unset |" in text
    assert "| `MODEL_PATH` | `models/mnist_model.h5` |" in text
    assert "| `BENCH_MNIST_DIR` | `../shared/data/mnist` |" in text
    assert "| `WEBHOOK_ALLOWED_HOSTS` | empty |" in text
    assert str(REPO_ROOT) not in text  # no absolute path of this checkout


def test_check_fails_on_a_stale_file_and_the_rewrite_fixes_it(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(f"# Configuration\n\n{BEGIN}\nold table\n{END}\n\nprose after\n", encoding="utf-8")
    assert main(["--check", "--path", str(doc)]) == 1
    assert "old table" in doc.read_text(encoding="utf-8")  # --check writes nothing
    assert main(["--path", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Configuration\n\n") and text.endswith(f"{END}\n\nprose after\n")
    assert main(["--check", "--path", str(doc)]) == 0


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        config_reference.rewritten("# no markers here\n")
