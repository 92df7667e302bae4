"""The twin's semantics version: which behaviour a twin output (and every label learned from it) has.

Bump :data:`TWIN_SEMANTICS_VERSION` by hand in the same change that alters what the twin computes for
some input (a scheduling rule, a step-time term, how arrivals or lengths are drawn), and regenerate
the golden outputs (``python tests/twin_golden.py``). Refactors, comments and speed-ups that leave
every output identical keep the version. ``tests/test_twin_golden.py`` guards both directions: a
changed output under an unchanged version fails, and so does a bumped version whose golden files were
not regenerated.

Sweeps record this number, and a surrogate trained on them records it too; a surrogate made under
another version is refused at load time (its labels describe another twin).
"""

from __future__ import annotations

TWIN_SEMANTICS_VERSION = 1
