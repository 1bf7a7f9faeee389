"""Read JSON with comments (VS Code's launch.json / settings.json format): a test support module.

Why a module of its own: several test files read `.vscode/launch.json`; importing a helper from
another `test_*` module would run (and collect) that module's tests as a side effect.

VS Code's JSONC allows `//` line comments, `/* */` block comments and trailing commas; none of
them may be touched inside a string ("https://..." stays a URL).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def strip_jsonc(text: str) -> str:
    """`text` with its comments removed (outside strings) and trailing commas dropped: plain JSON."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':  # a string, copied as is up to its closing quote (escapes included)
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end  # the newline itself is kept
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                raise ValueError("unterminated /* comment in JSONC")
            i = end + 2
        else:
            out.append(ch)
            i += 1
    plain = "".join(out)
    # Trailing commas: a comma followed only by whitespace before } or ]. Strings were copied
    # verbatim above, so this regex must not reach into them: match string-or-comma and keep strings.
    return re.sub(r'"(?:[^"\\]|\\.)*"|,(\s*[}\]])', lambda m: m.group(1) if m.group(1) is not None else m.group(0),
                  plain)


def read_jsonc(path: Path) -> Any:
    """Parse the JSONC file at `path`."""
    return json.loads(strip_jsonc(path.read_text()))
