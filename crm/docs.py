"""Generate the reference docs that code owns: the event JSON Schema and the settings table.

``make docs`` runs this; tests fail when the committed files are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from crm.contract import json_schema
from crm.settings import PROJECT_ROOT, Settings


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def settings_text() -> str:
    lines = [
        "# Settings",
        "",
        "Generated from `crm/settings.py` by `make docs`; do not edit by hand.",
        "Every setting is an environment variable (or a line in `.env`), validated at start:",
        "a bad value stops the command with the variable's name and what is wrong.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = (
                default.relative_to(PROJECT_ROOT)
                if default.is_relative_to(PROJECT_ROOT)
                else default
            )
        shown = "*(unset)*" if default is None else f"`{default}`"
        lines.append(f"| `CRM_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines) + "\n"


def write(root: Path = PROJECT_ROOT) -> list[Path]:
    out = {
        root / "docs" / "event.schema.json": schema_text(),
        root / "docs" / "settings.md": settings_text(),
    }
    for path, text in out.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(out)


if __name__ == "__main__":
    for p in write():
        print(f"wrote {p.relative_to(PROJECT_ROOT)}")
