"""Any text, as hypothesis's ``st.text()`` draws it, without its one-off set-up cost; a
helper module, not a test module.

``st.text()``'s default alphabet is ``st.characters(codec="utf-8")``. Hypothesis builds
that codec's table on first use by encoding every code point, about 3 CPU-s in each xdist
worker of a fresh checkout (then it caches the table in ``.hypothesis/``). The characters
UTF-8 can encode are every code point but the surrogates (U+D800 to U+DFFF), which are
exactly the category ``Cs``: ``exclude_categories=("Cs",)`` is the same alphabet, read
from hypothesis's table of categories, which costs a tenth of that.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

#: Every character UTF-8 can encode (all but the surrogates).
CHARACTERS = st.characters(exclude_categories=("Cs",))


def any_text(**kwargs: Any) -> st.SearchStrategy[str]:
    """``st.text(**kwargs)`` over :data:`CHARACTERS`."""
    return st.text(CHARACTERS, **kwargs)
