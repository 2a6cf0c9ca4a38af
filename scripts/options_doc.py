"""Write docs/options.md, the settings of every command, from the settings dataclasses (field metadata) and the
flags made from them.

    python scripts/options_doc.py          # rewrites docs/options.md
    python scripts/options_doc.py --check  # exit 1 when docs/options.md is not current
"""

from __future__ import annotations

import sys
from pathlib import Path

from mathloop.cli import settings_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"

if __name__ == "__main__":
    text = settings_markdown()
    if "--check" in sys.argv[1:]:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        sys.exit(0 if current == text else f"{DOC}: not current; run python scripts/options_doc.py")
    DOC.write_text(text, encoding="utf-8")
    print(f"{DOC}: {text.count(chr(10))} lines")
