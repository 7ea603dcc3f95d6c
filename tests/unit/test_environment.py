"""One typed settings object (`pipeline.config.Environment`) for every `CDRPIPE_*` variable,
and README's environment table generated from it: every variable, its default and its
meaning, nothing missing and nothing extra."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import config
from pipeline.config import Environment

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `(CDRPIPE_[A-Z0-9_]+)` \| (.*?) \| (.*?) \|$")


def shown(value: object) -> str:
    """A default as the table shows it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def table_rows() -> list[str]:
    rows = []
    for name, field in Environment.model_fields.items():
        variable = f"CDRPIPE_{name.upper()}"
        rows.append(f"| `{variable}` | {shown(field.default)} | {field.description} |")
    return rows


def test_readme_table_is_the_settings_class() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    documented = [line for line in readme if ROW.match(line)]
    assert documented == table_rows()


def test_every_variable_the_code_reads_is_a_setting() -> None:
    fields = {f"CDRPIPE_{name.upper()}" for name in Environment.model_fields}
    read = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        read |= set(re.findall(r"\bCDRPIPE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    assert read - fields == set()


def test_values_are_typed_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDRPIPE_PARTITIONS", "12")
    monkeypatch.setenv("CDRPIPE_BILL_TIMED_OUT", "yes")
    monkeypatch.setenv("CDRPIPE_STORE", "")
    monkeypatch.setenv("CDRPIPE_SESSION_TIMEOUT_S", "")
    env = config.environment()
    assert env.partitions == 12 and env.bill_timed_out is True and env.store is None
    assert config.session_timeout(local_state=False) == 20.0
    assert config.deadlines().bill_timed_out is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CDRPIPE_PARTITIONS", "eight"), ("CDRPIPE_PARTITIONS", "0"), ("CDRPIPE_COMPRESSION", "lzma")],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(config.SettingError, match=f"{variable}={value!r}: "):
        config.environment()
