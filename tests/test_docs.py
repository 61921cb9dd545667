"""The README documents every setting."""

from pathlib import Path

from service.settings import Settings


def test_every_setting_in_readme_table() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`ZOSERVE_{n.upper()}" not in readme]
    assert not missing, f"document these settings in README.md: {missing}"
