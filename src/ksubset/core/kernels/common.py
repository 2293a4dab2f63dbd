"""numba set-up and the numeric conventions shared by the compiled modules (imported only with numba).

Code generation (what made the difference, measured): inner loops use unsigned indices (numba's
negative-index wraparound otherwise blocks LLVM's vectoriser); functions that allocate nothing are compiled
without numba's reference counting (:data:`raw`: with it, every call increfs/decrefs each array argument with
atomic instructions, which costs more than the work of a 20-item row); ``error_model="numpy"`` (no
zero-division checks in vectorisable loops); ``fastmath`` only for reassociation and contraction (so LLVM
vectorises reductions) and no assumption about inf/nan.

numba's on-disk cache is keyed on each function's own source file only: a cached function keeps the
compiled code of what it calls from other files (and the constants it reads from them) after those files
change. :func:`_drop_stale_cache` therefore clears this package's cache whenever any of its sources changed.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numba
import numpy as np


def _drop_stale_cache() -> None:
    """Delete this package's numba cache files (``__pycache__/*.nbi``, ``*.nbc``) when its sources changed.

    The sources' digest is kept next to the cache; a read-only installation (where numba caches elsewhere and
    the sources do not change) is left alone.
    """
    here = Path(__file__).parent
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(here.glob("*.py")))).hexdigest()
    cache = here / "__pycache__"
    stamp = cache / "numba-sources.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for f in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # pragma: no cover - read-only installation
        pass


_drop_stale_cache()

_FM = {"reassoc", "contract"}
#: Compiled functions that allocate (work spaces): with numba's reference counting.
_jit = numba.njit(cache=True, fastmath=_FM, nogil=True, error_model="numpy")
#: Compiled functions that allocate nothing: without reference counting.
_raw = numba.njit(  # type: ignore[call-overload]  # _nrt is numba's private switch
    cache=True, fastmath=_FM, nogil=True, error_model="numpy", _nrt=False
)
#: The same for generated code (no source file to key an on-disk cache on).
_raw_nocache = numba.njit(  # type: ignore[call-overload]  # _nrt is numba's private switch
    cache=False, fastmath=_FM, nogil=True, error_model="numpy", _nrt=False
)

#: A table row is checked for rescaling every this many items (a safety net; see :mod:`.forward`).
RESCALE_EVERY = 32

_U = numba.uint64
_U1 = np.uint64(1)
_RESCALE = RESCALE_EVERY
_FLUSH = 2.0**-510  # kept entries >= _FLUSH, so products of two kept entries are normal numbers
_LO_SCALE = 2.0**-200
_HI_SCALE = 2.0**200
_TINY = 2.0**-900  # a marginal computed below this may have lost factors to flushing or subnormals
_LN2 = math.log(2.0)


@_raw
def _flush(v):
    return v if v >= _FLUSH else 0.0


@_raw
def _flush_signed(v):
    return v if abs(v) >= _FLUSH else 0.0
