"""The README documents every setting, with its default."""

import re
from pathlib import Path

from service.settings import Settings
from workers.runner import Limits

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_in_readme_table() -> None:
    missing = [n for n in Settings.model_fields if f"`ZOSERVE_{n.upper()}" not in README]
    assert not missing, f"document these settings in README.md: {missing}"


def test_readme_table_gives_each_settings_default() -> None:
    rows = dict(re.findall(r"^\| `ZOSERVE_(\w+)[^`]*` \| `([^`]*)` \|", README, flags=re.M))
    defaults = {n: str(f.get_default(call_default_factory=True)) for n, f in Settings.model_fields.items()}
    wrong = {n: (rows.get(n.upper()), d) for n, d in defaults.items() if rows.get(n.upper()) != d}
    assert not wrong, f"README default ≠ Settings default (readme, settings): {wrong}"


def test_in_process_runner_flushes_as_often_as_the_service() -> None:
    assert Limits().flush_seconds == Settings.model_fields["flush_seconds"].default
