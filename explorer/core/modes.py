"""The one list of retrieval modes: their names, the words people see, and what each needs.

A *mode* is one way of ranking the gallery for a query; the search, the evaluation, the
library's vector indices, the embedding map, the CLI (``--mode``, ``--modes``,
``--representation``) and the window's result columns all name modes with the constants below
and never type the strings out (``tests/test_modes.py`` checks this):

- ``image``: the image vectors alone (``Image only``)
- ``fused``: the image and caption vectors combined with weight α (``Caption-fused``;
  the formula is ``fusion.py``'s)
- ``caption``: the caption vectors alone (``Caption only``; images without a caption drop out)
- ``learned``: a trained fusion head's vectors (``Learned-fused``; only with a head loaded)

The first three have their own vector index in every library (``INDEXED``); ``learned`` is
computed from a head, so a search or an evaluation adds it only when a head is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

IMAGE, FUSED, CAPTION, LEARNED = "image", "fused", "caption", "learned"


@dataclass(frozen=True)
class Mode:
    name: str
    #: words for people: the result column's and the evaluation table's header
    title: str
    #: the mode a result column shows its rank changes against
    compare_with: str
    #: only with a trained fusion head (``--head``, Fusion head… in the window)
    needs_head: bool = False
    #: ranks only images that have a caption (a caption-less gallery gives no results)
    needs_captions: bool = False
    #: has its own vector index in the library
    indexed: bool = True


#: In the order the window's columns and the search's results show them.
MODES: tuple[Mode, ...] = (
    Mode(IMAGE, "Image only", compare_with=FUSED),
    Mode(FUSED, "Caption-fused", compare_with=IMAGE),
    Mode(CAPTION, "Caption only", compare_with=IMAGE, needs_captions=True),
    Mode(LEARNED, "Learned-fused", compare_with=IMAGE, needs_head=True, indexed=False),
)

BY_NAME = {m.name: m for m in MODES}
#: every mode name, in display order
ALL: tuple[str, ...] = tuple(m.name for m in MODES)
#: the modes that need no head (what ``--mode all`` and ``--modes``' default run without one)
BASE: tuple[str, ...] = tuple(m.name for m in MODES if not m.needs_head)
#: the modes a trained head adds
HEAD: tuple[str, ...] = tuple(m.name for m in MODES if m.needs_head)
#: the library's vector indices, in the order they are built (fused is built from the other two)
INDEXED: tuple[str, ...] = (IMAGE, CAPTION, FUSED)
TITLES = {m.name: m.title for m in MODES}
COMPARE = {m.name: m.compare_with for m in MODES}


def title(name: str) -> str:
    """The words for a mode (a name that is not a mode, e.g. ``fused+aqe``, is shown as it is)."""
    return TITLES.get(name, name)


def with_head(modes: Iterable[str]) -> tuple[str, ...]:
    """``modes`` plus the modes a loaded head adds (those not already there), in order."""
    modes = tuple(modes)
    return modes + tuple(m for m in HEAD if m not in modes)


def unknown(modes: Iterable[str]) -> list[str]:
    """The names in ``modes`` that are not modes."""
    return [m for m in modes if m not in BY_NAME]


def needing_head(modes: Iterable[str]) -> list[str]:
    """The names in ``modes`` that need a trained head."""
    return [m for m in modes if m in BY_NAME and BY_NAME[m].needs_head]
