"""The book's own Sphinx extension (named in ``_config.yml``): citations in round brackets.

sphinxcontrib-bibtex's ``author_year`` style writes ``[Zhang et al., 2025]``; this registers
``author_year_round``, the same with parentheses, ``(Zhang et al., 2025)`` and ``Zhang et al.
(2025)``, as books and papers print them. Loaded by Jupyter Book's Sphinx only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["setup"]


def _round() -> Any:
    from sphinxcontrib.bibtex.style.referencing import BracketStyle

    return BracketStyle(left="(", right=")")


def _register() -> None:
    from sphinxcontrib.bibtex.plugin import register_plugin
    from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

    @dataclasses.dataclass
    class AuthorYearRound(AuthorYearReferenceStyle):
        bracket_parenthetical: Any = dataclasses.field(default_factory=_round)
        bracket_textual: Any = dataclasses.field(default_factory=_round)
        bracket_author: Any = dataclasses.field(default_factory=_round)
        bracket_label: Any = dataclasses.field(default_factory=_round)
        bracket_year: Any = dataclasses.field(default_factory=_round)

    register_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round", AuthorYearRound)


def setup(app: Any) -> dict[str, Any]:
    _register()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
