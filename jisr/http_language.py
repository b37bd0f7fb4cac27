"""Reading a browser's Accept-Language header: one rule for every page Jisr serves.

The mediation consoles (jisr/console/catalog.py) and the public subscription form
(jisr/gateway/subscribe.py) offer different languages (the consoles have English, the form
has not), so each passes its own ``supported`` mapping; how the header is read is the same:
a browser set to "de;q=0.2, es;q=0.9" wants Spanish first, whatever the order it writes them in.
"""

from __future__ import annotations

from typing import Callable, Optional

# A real header is a few dozen characters; a longer one is cut, never an error.
MAX_HEADER_CHARS = 1000


def preferred_language(header: Optional[str], supported: Callable[[str], Optional[str]]) -> Optional[str]:
    """The browser's most wanted language that ``supported`` maps to one of ours, or None.

    ``supported`` turns a tag ("es-ES", "ary") into our code ("es", "ar") or None. Tags are
    ranked by their q weight (1 when absent; the header's order breaks ties); q=0 means "not
    this one"; "*" names nothing in particular. A malformed part is skipped, never an error:
    the header is the browser's, not the person's.
    """
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((header or "")[:MAX_HEADER_CHARS].split(",")):
        tag, *params = (piece.strip() for piece in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = -1.0
                if not 0.0 <= weight <= 1.0:  # "q=2", "q=nan", "q=inf": not a weight, the part is skipped
                    weight = -1.0
        code = supported(tag) if tag and tag != "*" else None
        if code and weight > 0:
            ranked.append((-weight, position, code))
    return min(ranked)[2] if ranked else None
