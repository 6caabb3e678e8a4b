# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The per-point path of :class:`flowdeck.pipeline.detectors.SeriesDetector`, compiled.

One :class:`Series` holds the whole state of one series in C arrays of doubles and does
the very arithmetic of the Python reference in ``detectors.py``, in the same order, so
every score, flag, explanation and state is float for float the same (tests/unit/
test_detect_kernel.py runs both on the same streams). Rare work stays in Python and is
called from here: finding the seasonal period (once per day of data), the late re-merge
look-up (``_again``), ``math.fsum`` when its inputs are not finite. The state exports to
and loads from the very dict :meth:`SeriesDetector.state` gives, so a state made by one
path restores in the other.

Python's ``min``/``max`` keep the first of equal items and compare with ``<``/``>``; the
helpers ``_pmin``/``_pmax`` do the same, so signed zeros and nans come out the same.
"""

from libc.math cimport fabs, floor, ceil, exp, log, sqrt, rint, isfinite, signbit
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memmove, memcpy
from cpython.float cimport PyFloat_AsDouble
from collections import deque
import math

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FLOWDECK_PREFETCH(p) __builtin_prefetch((const void *)(p))
    #else
    #define FLOWDECK_PREFETCH(p) ((void)0)
    #endif
    """
    void FLOWDECK_PREFETCH(const void *p) nogil

# Set by detectors.py (the Python reference) when it imports this module.
cdef object _Score = None
cdef object _again_of = None
cdef object _season_period = None
cdef object _py_fsum = math.fsum

cdef enum:
    M_ROBUST_Z = 0
    M_EWMA = 1
    M_RATE = 2
    M_SEASONAL = 3
    M_LEVEL_SHIFT = 4
    M_FLATLINE = 5
    N_METHODS = 6

_NAMES = ("robust_z", "ewma", "rate", "seasonal", "level_shift", "flatline")
cdef tuple NAMES = _NAMES

cdef double MAD_TO_SIGMA = 1.4826
cdef double MEAN_AD_TO_SIGMA = 1.2533
cdef double RELATIVE_EPSILON = 1e-9
cdef double ABSOLUTE_EPSILON = 1e-12
cdef double HOUR = 3600.0
cdef double DAY = 86400.0
cdef double WEEK = 7 * 86400.0
cdef long SEASON_BINS = 24
cdef long SEASON_HISTORY = 7
cdef double TAIL_SHARE = 0.02
cdef long TAIL_MIN = 5
cdef long TAIL_REFIT = 10
cdef double CUSUM_CLIP = 3.0
cdef double INDEX_LIMIT = 4e18  # seasonal bin indices beyond this leave the kernel


def setup(score_cls, again_of, season_period):
    """Called once by detectors.py: the Score class and the two Python helpers."""
    global _Score, _again_of, _season_period
    _Score, _again_of, _season_period = score_cls, again_of, season_period


class KernelLimit(Exception):
    """A point the kernel cannot take (a seasonal bin index beyond int64): the caller
    moves the series to the Python path, whose state is the same."""


cdef inline double _pmax(double a, double b) nogil:
    return b if b > a else a


cdef inline double _pmin(double a, double b) nogil:
    return b if b < a else a


cdef inline double _epsilon(double center) nogil:
    return _pmax(fabs(center) * RELATIVE_EPSILON, ABSOLUTE_EPSILON)


cdef inline Py_ssize_t _bisect_left(double *a, Py_ssize_t hi, double x) nogil:
    cdef Py_ssize_t lo = 0, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _bisect_right(double *a, Py_ssize_t hi, double x) nogil:
    cdef Py_ssize_t lo = 0, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline Py_ssize_t _bisect_right_without(double *a, Py_ssize_t hi, double x,
                                             Py_ssize_t gone) nogil:
    """bisect_right(x) in ``a`` with ``a[gone]`` deleted (``hi`` values left), in place."""
    cdef Py_ssize_t lo = 0, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid + (mid >= gone)]:
            hi = mid
        else:
            lo = mid + 1
    return lo


# --------------------------------------------------------------------------- exact sum

cdef double _fsum(double *v, Py_ssize_t n) except? -1.0:
    """math.fsum of ``v[:n]``: CPython's algorithm (Shewchuk's partials and the final
    half-way correction), the same result bit for bit; non-finite input or an
    intermediate overflow go to math.fsum itself (it raises or returns what it returns)."""
    cdef double partials[128]
    cdef Py_ssize_t i, j, k, m = 0
    cdef double x, y, t, hi, yr, lo
    for i in range(n):
        x = v[i]
        if not isfinite(x):
            return _fsum_py(v, n)
        j = 0
        for k in range(m):
            y = partials[k]
            if fabs(x) < fabs(y):
                t = x
                x = y
                y = t
            hi = x + y
            yr = hi - x
            lo = y - yr
            if lo != 0.0:
                partials[j] = lo
                j += 1
            x = hi
        m = j
        if x != 0.0:
            if not isfinite(x):
                return _fsum_py(v, n)
            if m >= 128:
                return _fsum_py(v, n)
            partials[m] = x
            m += 1
    hi = 0.0
    if m > 0:
        m -= 1
        hi = partials[m]
        lo = 0.0
        while m > 0:
            x = hi
            m -= 1
            y = partials[m]
            hi = x + y
            yr = hi - x
            lo = y - yr
            if lo != 0.0:
                break
        if m > 0 and ((lo < 0.0 and partials[m - 1] < 0.0) or
                      (lo > 0.0 and partials[m - 1] > 0.0)):
            y = lo * 2.0
            x = hi + y
            yr = x - hi
            if y == yr:
                hi = x
    return hi


cdef double _fsum_py(double *v, Py_ssize_t n) except? -1.0:
    return _py_fsum([v[i] for i in range(n)])


def fsum_of(values):
    """The kernel's exact sum of ``values`` (for the tests: it must equal math.fsum)."""
    cdef Py_ssize_t n = len(values), i
    cdef double *buf = <double *>malloc(max(n, 1) * sizeof(double))
    try:
        for i in range(n):
            buf[i] = values[i]
        return _fsum(buf, n)
    finally:
        free(buf)


# --------------------------------------------------------------------------- windows

cdef enum:
    BLOCK = 64            # values per block of a blocked window
    BLOCKED_MIN_CAP = 256  # windows this long (the tails) keep their values in blocks
    CHAIN_MAX = 3         # a full block passes values on to at most this many neighbours


cdef struct Win:
    Py_ssize_t cap    # maxlen
    Py_ssize_t alloc  # doubles allocated in the ring (grows to cap while filling)
    Py_ssize_t srt_alloc  # and in srt (a flat window: the same)
    Py_ssize_t count
    Py_ssize_t head   # ring index of the oldest value
    Py_ssize_t negzero  # how many of the values are -0.0
    Py_ssize_t nans   # how many are nan (then searches are Python's bisect, step for step)
    double *ring      # arrival order
    double *srt       # ascending (a flat window)
    double *idx       # idx[m] = srt[16 m]: a search looks there first (fewer cache misses)
    # A blocked window (a tail) keeps the ascending values as the concatenation of its
    # blocks instead of srt: block b holds cnt[b] values (0 to BLOCK) at blk + b * BLOCK,
    # top[b] is its last (the block's largest) when cnt[b] > 0.
    bint blocked
    Py_ssize_t nb     # blocks allocated
    Py_ssize_t nbmax  # blocks at most: cap and an eighth more, in blocks
    int *cnt
    double *top
    double *blk


cdef int _win_init(Win *w, Py_ssize_t cap, bint blocked=False) except -1:
    w.cap = cap
    w.alloc = 0
    w.srt_alloc = 0
    w.count = 0
    w.head = 0
    w.negzero = 0
    w.nans = 0
    w.ring = NULL
    w.srt = NULL
    w.idx = NULL
    w.blocked = blocked and cap >= BLOCKED_MIN_CAP
    w.nb = 0
    w.nbmax = (cap + cap // 8 + BLOCK - 1) // BLOCK
    w.cnt = NULL
    w.top = NULL
    w.blk = NULL
    return 0


cdef void _win_free(Win *w) noexcept:
    free(w.ring)
    free(w.srt)
    free(w.idx)
    free(w.cnt)
    free(w.top)
    free(w.blk)
    w.ring = NULL
    w.srt = NULL
    w.idx = NULL
    w.cnt = NULL
    w.top = NULL
    w.blk = NULL
    w.nb = 0
    w.alloc = 0
    w.srt_alloc = 0
    w.count = 0
    w.head = 0
    w.negzero = 0
    w.nans = 0


# ---- blocked windows: the sorted values in blocks (the same sequence as a flat srt)

cdef void _bw_flatten(Win *w, double *out) noexcept nogil:
    """The ascending values, as one array (what srt would hold)."""
    cdef Py_ssize_t b, k = 0
    for b in range(w.nb):
        memcpy(out + k, w.blk + b * BLOCK, w.cnt[b] * sizeof(double))
        k += w.cnt[b]


cdef int _bw_spread(Win *w, double *values, Py_ssize_t n) except -1:
    """Lay the ascending ``values[:n]`` out evenly over the blocks, adding blocks (up to
    nbmax) so that each is filled to at most seven eighths."""
    cdef Py_ssize_t nb = w.nb, b, start, end
    cdef void *p
    if nb < 1:
        nb = 1
    while nb < w.nbmax and n * 8 > nb * BLOCK * 7:
        nb *= 2
    if nb > w.nbmax:
        nb = w.nbmax
    if nb * BLOCK < n:
        raise MemoryError("blocked window overfull")
    if nb != w.nb:
        p = realloc(w.blk, nb * BLOCK * sizeof(double))
        if p == NULL:
            raise MemoryError()
        w.blk = <double *>p
        p = realloc(w.cnt, nb * sizeof(int))
        if p == NULL:
            raise MemoryError()
        w.cnt = <int *>p
        p = realloc(w.top, nb * sizeof(double))
        if p == NULL:
            raise MemoryError()
        w.top = <double *>p
        w.nb = nb
    for b in range(nb):
        start = n * b // nb
        end = n * (b + 1) // nb
        w.cnt[b] = <int>(end - start)
        memcpy(w.blk + b * BLOCK, values + start, (end - start) * sizeof(double))
        if end > start:
            w.top[b] = values[end - 1]
    return 0


cdef int _bw_rebuild(Win *w, Py_ssize_t n) except -1:
    """Spread the blocks' values evenly again (a block and its neighbours are full)."""
    cdef double *buf = <double *>malloc((n if n else 1) * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        _bw_flatten(w, buf)
        _bw_spread(w, buf, n)
    finally:
        free(buf)
    return 0


cdef inline Py_ssize_t _bw_left(Win *w, double x, Py_ssize_t *block,
                                Py_ssize_t *offset) noexcept nogil:
    """bisect_left of the (nan-free) ascending values: the count of values below x, and
    the block and offset where it falls (the first block whose largest is not below x;
    past the last value: block nb)."""
    cdef Py_ssize_t b, pos = 0, o
    cdef int c
    for b in range(w.nb):
        c = w.cnt[b]
        if c == 0:
            continue
        if w.top[b] < x:
            pos += c
            continue
        o = _bisect_left(w.blk + b * BLOCK, c, x)
        block[0] = b
        offset[0] = o
        return pos + o
    block[0] = w.nb
    offset[0] = 0
    return pos


cdef inline void _bw_right(Win *w, double x, Py_ssize_t *block,
                           Py_ssize_t *offset) noexcept nogil:
    """Where bisect_right puts x: the first block whose largest is above x, at the
    bisect_right in it; past the last value: the end of the last non-empty block."""
    cdef Py_ssize_t b, last = 0
    cdef int c
    for b in range(w.nb):
        c = w.cnt[b]
        if c == 0:
            continue
        if x < w.top[b]:
            block[0] = b
            offset[0] = _bisect_right(w.blk + b * BLOCK, c, x)
            return
        last = b
    block[0] = last
    offset[0] = w.cnt[last]


cdef inline double _bw_at(Win *w, Py_ssize_t i) noexcept nogil:
    """The value at ascending position i (0 <= i < count)."""
    cdef Py_ssize_t b = 0
    while i >= w.cnt[b]:
        i -= w.cnt[b]
        b += 1
    return w.blk[b * BLOCK + i]


cdef void _bw_top(Win *w, Py_ssize_t m, double *out) noexcept nogil:
    """The m largest values, ascending, into out[:m] (m <= count)."""
    cdef Py_ssize_t b = w.nb - 1, c
    while m > 0:
        c = w.cnt[b]
        if c > m:
            memcpy(out, w.blk + b * BLOCK + (c - m), m * sizeof(double))
            return
        m -= c
        memcpy(out + m, w.blk + b * BLOCK, c * sizeof(double))
        b -= 1


cdef inline void _bw_delete(Win *w, Py_ssize_t b, Py_ssize_t o) noexcept nogil:
    cdef double *a = w.blk + b * BLOCK
    cdef int c = w.cnt[b] - 1
    memmove(a + o, a + o + 1, (c - o) * sizeof(double))
    w.cnt[b] = c
    if c:
        w.top[b] = a[c - 1]


cdef inline void _bw_put(Win *w, Py_ssize_t b, Py_ssize_t o, double v) noexcept nogil:
    """Insert v at offset o of block b, which has room."""
    cdef double *a = w.blk + b * BLOCK
    cdef int c = w.cnt[b]
    memmove(a + o + 1, a + o, (c - o) * sizeof(double))
    a[o] = v
    w.cnt[b] = c + 1
    w.top[b] = a[c]


cdef inline void _bw_pass_right(Win *w, Py_ssize_t q) noexcept nogil:
    """Move the last value of block q to the front of block q + 1 (which has room)."""
    cdef int c = w.cnt[q] - 1
    _bw_put(w, q + 1, 0, w.blk[q * BLOCK + c])
    w.cnt[q] = c
    if c:
        w.top[q] = w.blk[q * BLOCK + c - 1]


cdef inline void _bw_pass_left(Win *w, Py_ssize_t q) noexcept nogil:
    """Move the first value of block q to the end of block q - 1 (which has room)."""
    cdef double *a = w.blk + q * BLOCK
    cdef Py_ssize_t p = q - 1
    cdef int c = w.cnt[q] - 1
    w.blk[p * BLOCK + w.cnt[p]] = a[0]
    w.top[p] = a[0]
    w.cnt[p] += 1
    memmove(a, a + 1, c * sizeof(double))
    w.cnt[q] = c


cdef int _bw_insert(Win *w, double v) except -1:
    """insort_right of a (non-nan) v into the blocks' values (count is the values there
    now): into its block, or, that one full, through at most CHAIN_MAX full neighbours
    to one with room, or else the values are spread evenly again first."""
    cdef Py_ssize_t b, o, l, r, q
    if w.nb == 0:
        _bw_spread(w, &v, 1)
        return 0
    _bw_right(w, v, &b, &o)
    if w.cnt[b] < BLOCK:
        _bw_put(w, b, o, v)
        return 0
    r = b + 1
    while r < w.nb and w.cnt[r] == BLOCK and r - b <= CHAIN_MAX:
        r += 1
    l = b - 1
    while l >= 0 and w.cnt[l] == BLOCK and b - l <= CHAIN_MAX:
        l -= 1
    if r < w.nb and r - b <= CHAIN_MAX and w.cnt[r] < BLOCK and (
            l < 0 or b - l > CHAIN_MAX or w.cnt[l] == BLOCK or r - b <= b - l):
        q = r - 1
        while q > b:
            _bw_pass_right(w, q)
            q -= 1
        if o == BLOCK:
            _bw_put(w, b + 1, 0, v)
        else:
            _bw_pass_right(w, b)
            _bw_put(w, b, o, v)
        return 0
    if l >= 0 and b - l <= CHAIN_MAX and w.cnt[l] < BLOCK:
        q = l + 1
        while q < b:
            _bw_pass_left(w, q)
            q += 1
        if o == 0:
            _bw_put(w, b - 1, w.cnt[b - 1], v)
        else:
            _bw_pass_left(w, b)
            _bw_put(w, b, o - 1, v)
        return 0
    _bw_rebuild(w, w.count)
    _bw_right(w, v, &b, &o)
    if w.cnt[b] == BLOCK:  # the values are not spread for room: cannot happen
        raise MemoryError("blocked window overfull")
    _bw_put(w, b, o, v)
    return 0


cdef int _bw_add_nan(Win *w, double v, bint evict, double old) except -1:
    """_win_add's sorted part with a nan in the window or coming: on the values laid out
    flat, the very comparisons of the flat window (Python's bisect), spread again."""
    cdef Py_ssize_t n = w.count, i, j
    cdef double *buf = <double *>malloc((n + 1) * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        _bw_flatten(w, buf)
        if evict:
            i = _bisect_left(buf, n, old)
            if i >= n:
                raise IndexError("list assignment index out of range")
            if buf[i] != buf[i]:
                w.nans -= 1
            j = _bisect_right_without(buf, n - 1, v, i)
            if v != v:
                w.nans += 1
            if j >= i:
                memmove(buf + i, buf + i + 1, (j - i) * sizeof(double))
            else:
                memmove(buf + j + 1, buf + j, (i - j) * sizeof(double))
            buf[j] = v
        else:
            i = _bisect_right(buf, n, v)
            if v != v:
                w.nans += 1
            memmove(buf + i + 1, buf + i, (n - i) * sizeof(double))
            buf[i] = v
            n += 1
        _bw_spread(w, buf, n)
    finally:
        free(buf)
    return 0


cdef int _bw_replace(Win *w, double old, double v) except -1:
    """RollingWindow.add's sorted part, window full: delete at bisect_left(old), then
    insort_right(v)."""
    cdef Py_ssize_t b, o
    if w.nans or v != v:
        return _bw_add_nan(w, v, True, old)
    _bw_left(w, old, &b, &o)
    _bw_delete(w, b, o)
    w.count -= 1
    try:
        _bw_insert(w, v)
    finally:
        w.count += 1
    return 0


cdef Py_ssize_t _bw_rank_left(Win *w, double x) except -1:
    """bisect_left of x in the ascending values (with nans: Python's, on them flat)."""
    cdef Py_ssize_t b, o, i
    cdef double *buf
    if w.nans or x != x:
        buf = <double *>malloc((w.count if w.count else 1) * sizeof(double))
        if buf == NULL:
            raise MemoryError()
        _bw_flatten(w, buf)
        i = _bisect_left(buf, w.count, x)
        free(buf)
        return i
    return _bw_left(w, x, &b, &o)


cdef inline Py_ssize_t _win_left(Win *w, double x) nogil:
    """bisect_left(srt, x). Without nans the answer is the count of values below x, so
    it is looked up in the block index first, then in one block of 16."""
    cdef Py_ssize_t n = w.count, m, start, end
    if w.nans or x != x or n < 64:
        return _bisect_left(w.srt, n, x)
    m = _bisect_left(w.idx, (n + 15) >> 4, x)
    if m == 0:
        return 0
    start = (m - 1) << 4
    end = m << 4
    if end > n:
        end = n
    return start + _bisect_left(w.srt + start, end - start, x)


cdef inline Py_ssize_t _win_right(Win *w, double x) nogil:
    """bisect_right(srt, x), as _win_left."""
    cdef Py_ssize_t n = w.count, m, start, end
    if w.nans or x != x or n < 64:
        return _bisect_right(w.srt, n, x)
    m = _bisect_right(w.idx, (n + 15) >> 4, x)
    if m == 0:
        return 0
    start = (m - 1) << 4
    end = m << 4
    if end > n:
        end = n
    return start + _bisect_right(w.srt + start, end - start, x)


cdef inline void _win_reindex(Win *w, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Refresh the index entries of the sorted positions lo..hi (inclusive)."""
    cdef Py_ssize_t m
    for m in range((lo + 15) >> 4, (hi >> 4) + 1):
        w.idx[m] = w.srt[m << 4]


cdef inline void _win_prefetch(Win *w) noexcept nogil:
    """Ask for the memory of a window that its searches and adds read first (a hint: no
    result depends on it): the ring's oldest value, and the sorted values of a short
    window (up to 128: the value, rate and residual windows by default), or the block
    index of a long one (a tail's 1,000 sorted values are 8 KB: fetching them all costs
    more than the misses of the few blocks a point touches)."""
    cdef Py_ssize_t k, n = w.count
    if n == 0:
        return
    FLOWDECK_PREFETCH(w.ring + w.head)
    if w.blocked:
        for k in range(0, w.nb, 8):
            FLOWDECK_PREFETCH(w.top + k)
        for k in range(0, w.nb, 16):
            FLOWDECK_PREFETCH(w.cnt + k)
    elif n <= 128:
        for k in range(0, n, 8):
            FLOWDECK_PREFETCH(w.srt + k)
    else:
        for k in range(0, (n + 15) >> 4, 8):
            FLOWDECK_PREFETCH(w.idx + k)


cdef inline void _ring_put(Win *w, double v) noexcept nogil:
    """A full window's ring: ``v`` in the oldest value's place, which is now the newest."""
    w.ring[w.head] = v
    w.head += 1
    if w.head == w.cap:
        w.head = 0


cdef int _win_add(Win *w, double v) except -1:
    """RollingWindow.add: evict the oldest (deleted at its bisect_left), insort the new."""
    cdef Py_ssize_t i, j, size
    cdef double *p
    cdef double old
    if v == 0.0 and signbit(v):
        w.negzero += 1
    if w.count == w.cap:
        old = w.ring[w.head]
        if old == 0.0 and signbit(old):
            w.negzero -= 1
        if old == v and (v != 0.0 or (w.negzero == 0 and not signbit(v))):
            # The value leaving and the one coming have the same bits, and so have all
            # the values between where they sit (equal, and no -0.0 among zeros): the
            # sorted array stays as it is (a flat statistic, a run length of 0, ...).
            _ring_put(w, v)
            return 0
        if w.blocked:
            _bw_replace(w, old, v)
            _ring_put(w, v)
            return 0
        if w.nans or v != v:
            # Python's bisect with nans about: the very comparisons it makes.
            i = _bisect_left(w.srt, w.count, old)
            if i >= w.count:
                raise IndexError("list assignment index out of range")
            if w.srt[i] != w.srt[i]:
                w.nans -= 1
            j = _bisect_right_without(w.srt, w.count - 1, v, i)
            if v != v:
                w.nans += 1
        else:
            # Delete at i, then insort: j is where bisect_right puts v once srt[i] is
            # gone (one less if srt[i] <= v); only the values between i and j move.
            i = _win_left(w, old)
            j = _win_right(w, v)
            if j > i:
                j -= 1
        if j >= i:
            memmove(w.srt + i, w.srt + i + 1, (j - i) * sizeof(double))
            w.srt[j] = v
            _win_reindex(w, i, j)
        else:
            memmove(w.srt + j + 1, w.srt + j, (i - j) * sizeof(double))
            w.srt[j] = v
            _win_reindex(w, j, i)
        _ring_put(w, v)
        return 0
    if w.count == w.alloc:  # while filling, head is 0: the ring is a plain array
        size = w.alloc * 2 if w.alloc else 16
        if size > w.cap:
            size = w.cap
        p = <double *>realloc(w.ring, size * sizeof(double))
        if p == NULL:
            raise MemoryError()
        w.ring = p
        w.alloc = size
    if w.blocked:
        w.ring[w.count] = v
        if w.nans or v != v:
            _bw_add_nan(w, v, False, 0.0)
        else:
            _bw_insert(w, v)
        w.count += 1
        return 0
    if w.srt_alloc < w.alloc:
        size = w.alloc
        p = <double *>realloc(w.srt, size * sizeof(double))
        if p == NULL:
            raise MemoryError()
        w.srt = p
        p = <double *>realloc(w.idx, ((size + 15) >> 4) * sizeof(double))
        if p == NULL:
            raise MemoryError()
        w.idx = p
        w.srt_alloc = size
    w.ring[w.count] = v
    if v != v:
        i = _bisect_right(w.srt, w.count, v)
        w.nans += 1
    else:
        i = _win_right(w, v)
    memmove(w.srt + i + 1, w.srt + i, (w.count - i) * sizeof(double))
    w.srt[i] = v
    w.count += 1
    _win_reindex(w, i, w.count - 1)
    return 0


cdef Py_ssize_t _win_bytes(Win *w) noexcept:
    return (w.alloc + w.srt_alloc + ((w.srt_alloc + 15) >> 4)) * sizeof(double) + w.nb * (
        BLOCK * sizeof(double) + sizeof(double) + sizeof(int))


cdef list _win_fifo(Win *w):
    cdef Py_ssize_t i
    return [w.ring[(w.head + i) % w.cap] for i in range(w.count)]


cdef dict _win_dump(Win *w):
    return {"rolling": w.cap, "values": _win_fifo(w)}


cdef int _win_load(Win *w, Py_ssize_t cap, object values, bint blocked=False) except -1:
    _win_free(w)
    _win_init(w, cap, blocked)
    for v in values:
        _win_add(w, v)
    return 0


cdef inline double _median(Win *w) nogil:
    cdef Py_ssize_t n = w.count
    if n % 2:
        return w.srt[n // 2]
    return (w.srt[n // 2 - 1] + w.srt[n // 2]) / 2.0


cdef double _mad_sorted(double *values, Py_ssize_t n, double center) nogil:
    """detectors.mad_sorted, step for step."""
    cdef Py_ssize_t k = _bisect_left(values, n, center)
    cdef Py_ssize_t n_lo = k, n_hi = n - k
    cdef Py_ssize_t take = n // 2 + 1
    cdef Py_ssize_t a = take - n_hi, top = take, mid, b
    cdef bint has_lo1, has_hi1, has_2
    cdef double lo1 = 0.0, hi1 = 0.0, two = 0.0, current, previous = 0.0
    if a < 0:
        a = 0
    if n_lo < top:
        top = n_lo
    while a < top:
        mid = (a + top) // 2
        b = take - mid
        if b > 0 and values[k + b - 1] - center > center - values[k - 1 - mid]:
            a = mid + 1
        else:
            top = mid
    b = take - a
    has_lo1 = a > 0
    if has_lo1:
        lo1 = center - values[k - a]
    has_hi1 = b > 0
    if has_hi1:
        hi1 = values[k + b - 1] - center
    if not has_hi1 or (has_lo1 and lo1 >= hi1):
        current = lo1
        has_2 = a > 1
        if has_2:
            two = center - values[k - a + 1]
        if not has_2 or (has_hi1 and hi1 > two):
            previous = hi1
        else:
            previous = two
    else:
        current = hi1
        has_2 = b > 1
        if has_2:
            two = values[k + b - 2] - center
        if not has_2 or (has_lo1 and lo1 > two):
            previous = lo1
        else:
            previous = two
    if n % 2:
        return current
    return (previous + current) / 2.0


cdef double _sigma_from_mad(double *values, Py_ssize_t n, double center,
                            double sigma) except? -1.0:
    cdef Py_ssize_t lo, hi
    cdef double total
    if sigma == 0.0:
        lo = _bisect_left(values, n, center)
        hi = _bisect_right(values, n, center)
        total = (_fsum(values + hi, n - hi) - center * <double>(n - hi)
                 + center * <double>lo - _fsum(values, lo))
        sigma = MEAN_AD_TO_SIGMA * _pmax(total, 0.0) / <double>n
    return _pmax(sigma, _epsilon(center))


cdef int _center_spread(Win *w, double *center, double *spread) except -1:
    """Median and robust sigma of a (non-empty) window, as the reference inlines them."""
    cdef double c = _median(w)
    cdef double s = MAD_TO_SIGMA * _mad_sorted(w.srt, w.count, c)
    if s == 0.0 or s < ABSOLUTE_EPSILON or s < fabs(c) * RELATIVE_EPSILON:
        s = _sigma_from_mad(w.srt, w.count, c, s)
    center[0] = c
    spread[0] = s
    return 0


# --------------------------------------------------------------------------- calibrated tails

cdef struct Tail:
    Win w
    double min_excess
    bint has_fit
    long fn
    long fk
    double fu
    double fm
    long stale
    # Since the last fit, every statistic that came and went was below fu (no nan
    # about): the top k + 1 values it read are the same (see _tail_fit).
    bint top_kept


cdef int _tail_add(Tail *t, double stat) except -1:
    if t.top_kept and (t.w.nans or not stat < t.fu or (
            t.w.count == t.w.cap and not t.w.ring[t.w.head] < t.fu)):
        t.top_kept = False
    if t.w.count == t.w.cap:
        _win_add(&t.w, stat)
        t.stale += 1
        if t.stale >= TAIL_REFIT:
            t.has_fit = False
    else:
        _win_add(&t.w, stat)
        t.stale += 1
        if t.stale >= TAIL_REFIT or t.w.count < t.w.cap:
            t.has_fit = False
    return 0


cdef int _tail_fit(Tail *t) except -1:
    cdef long n, k, tk
    cdef double u
    cdef double stack[64]
    cdef double *top = stack
    if t.has_fit:
        return 0
    n = t.w.count
    tk = <long>(TAIL_SHARE * <double>n)
    k = tk if tk > TAIL_MIN else TAIL_MIN
    if n - 1 < k:
        k = n - 1
    if t.top_kept and k == t.fk:
        # The values from srt[n - k - 1] on are those of the last fit (a value added
        # or deleted below u only moves them along): u and m come out the same.
        t.fn = n
        t.has_fit = True
        t.stale = 0
        return 0
    if not t.w.blocked:
        u = t.w.srt[n - k - 1]
        if k == 0:
            raise ZeroDivisionError("float division by zero")
        t.fm = _pmax(_pmax(_fsum(t.w.srt + (n - k), k) / <double>k - u, t.min_excess),
                     _epsilon(u))
    else:
        if k + 1 <= 64:
            top = stack
        else:
            top = <double *>malloc((k + 1) * sizeof(double))
            if top == NULL:
                raise MemoryError()
        try:
            _bw_top(&t.w, k + 1, top)  # the values from srt[n - k - 1] on
            u = top[0]
            if k == 0:
                raise ZeroDivisionError("float division by zero")
            t.fm = _pmax(_pmax(_fsum(top + 1, k) / <double>k - u, t.min_excess),
                         _epsilon(u))
        finally:
            if top != stack:
                free(top)
    t.fn, t.fk, t.fu = n, k, u
    t.has_fit = True
    t.stale = 0
    t.top_kept = t.w.nans == 0
    return 0


cdef double _tail_p(Tail *t, double stat) except? -1.0:
    _tail_fit(t)
    if stat <= t.fu:
        if t.w.blocked:
            return <double>(t.fn - _bw_rank_left(&t.w, stat) + 1) / <double>(t.fn + 1)
        return <double>(t.fn - _win_left(&t.w, stat) + 1) / <double>(t.fn + 1)
    return <double>t.fk / <double>(t.fn + 1) * exp(-(stat - t.fu) / t.fm)


cdef double _tail_threshold(Tail *t, double p) except? -1.0:
    cdef double c
    cdef long i
    _tail_fit(t)
    if p >= <double>t.fk / <double>(t.fn + 1):
        c = ceil(<double>(t.fn + 1) - p * <double>(t.fn + 1))
        i = t.fn - 1
        if c < <double>i:
            i = <long>c
        if i < 0:
            i = 0
        if t.w.blocked:
            return _bw_at(&t.w, i)
        return t.w.srt[i]
    return t.fu + t.fm * log(<double>t.fk / <double>(t.fn + 1) / p)


# --------------------------------------------------------------------------- one point

cdef struct Verdict:
    double score
    bint anomalous
    int method        # index into the measures, -1: no method active
    bint has_p
    double p
    bint has_expected
    double expected
    bint has_range
    double low
    double high
    long episode


cdef class Series:
    """The state of one series, in C (see the module docstring)."""

    # settings
    cdef bint calibrate, learn_rates, fixed
    cdef int n_methods
    cdef int methods[6]
    cdef bint has[6]
    cdef long min_history, need, refractory, window
    cdef double log_flag, flag_probability, z_threshold, rate_threshold, cusum_h_d, cusum_k_d
    cdef object alpha_obj, k_obj, h_obj
    # common
    cdef long count, run, episodes, below
    cdef bint in_episode, has_last
    cdef double last_ts, last_value
    cdef object last_ts_obj
    cdef public object flagged
    # value / rate windows and their memo
    cdef Win values, rates
    cdef long memo_count
    cdef double memo_center, memo_spread
    # ewma
    cdef double e_alpha, e_mean, e_var, e_decay
    cdef long e_count
    # cusum
    cdef double c_pos, c_neg
    cdef long c_hold, c_holdoff
    # seasonal
    cdef object period_obj
    cdef bint has_period, has_current, s_has_last, s_last_has_base
    cdef double period, width, s_total, s_last_ts, s_last_base
    cdef long current, s_n, since_check, s_last_current
    cdef Py_ssize_t b_cap, b_count, b_head
    cdef double *b_val
    cdef char *b_has
    cdef Win residuals
    # tails, by method code
    cdef Tail tails[6]
    # the measures of the point being scored, in method order
    cdef int nm
    cdef int m_code[6]
    cdef double m_stat[6]
    cdef bint m_has_exp[6]
    cdef double m_exp[6]
    cdef bint m_has_spread[6]
    cdef double m_spread[6]

    def __cinit__(self):
        cdef int i
        self.b_val = NULL
        self.b_has = NULL
        _win_init(&self.values, 2)
        _win_init(&self.rates, 2)
        _win_init(&self.residuals, 2)
        for i in range(N_METHODS):
            _win_init(&self.tails[i].w, 10)

    def __dealloc__(self):
        cdef int i
        _win_free(&self.values)
        _win_free(&self.rates)
        _win_free(&self.residuals)
        for i in range(N_METHODS):
            _win_free(&self.tails[i].w)
        free(self.b_val)
        free(self.b_has)

    def __init__(self, settings, flagged):
        cdef int i, code
        methods = settings.methods
        self.n_methods = len(methods)
        for i in range(N_METHODS):
            self.has[i] = False
        for i, name in enumerate(methods):
            code = NAMES.index(name)
            self.methods[i] = code
            self.has[code] = True
        self.calibrate = bool(settings.calibrate)
        self.window = settings.window
        self.z_threshold = settings.z_threshold
        self.learn_rates = self.has[M_RATE] and settings.rate_threshold is None
        self.rate_threshold = 0.0 if settings.rate_threshold is None else settings.rate_threshold
        self.flag_probability = settings.flag_probability
        self.log_flag = math.log(settings.flag_probability)
        self.need = max(settings.warmup, 2)  # as SeriesDetector._need: a fit takes two
        self.min_history = max(settings.min_history, 1)
        self.refractory = settings.refractory
        self.count = self.run = self.episodes = self.below = 0
        self.in_episode = False
        self.has_last = False
        self.last_ts = self.last_value = 0.0
        self.last_ts_obj = None
        self.flagged = flagged
        _win_init(&self.values, settings.window)
        _win_init(&self.rates, settings.window)
        self.memo_count = -1
        self.alpha_obj = settings.ewma_alpha
        self.e_alpha = settings.ewma_alpha
        self.e_mean = self.e_var = 0.0
        self.e_decay = 1.0
        self.e_count = 0
        self.k_obj, self.h_obj = settings.cusum_k, settings.cusum_h
        self.cusum_k_d, self.cusum_h_d = settings.cusum_k, settings.cusum_h
        self.c_pos = self.c_neg = 0.0
        self.c_hold = 0
        self.c_holdoff = settings.window // 2
        season = settings.season
        self.fixed = season is not None
        if season is not None:
            self.period_obj = season
            self.width = season / SEASON_BINS
            self.b_cap = SEASON_HISTORY * SEASON_BINS + 1
        else:
            self.period_obj = None
            self.width = HOUR
            self.b_cap = 3 * <long>(WEEK / HOUR)
        self._set_period(self.period_obj)
        if self.has[M_SEASONAL]:
            self.b_val = <double *>malloc(self.b_cap * sizeof(double))
            self.b_has = <char *>malloc(self.b_cap)
            if self.b_val == NULL or self.b_has == NULL:
                raise MemoryError()
        self.b_count = self.b_head = 0
        self.has_current = False
        self.current = 0
        self.s_total = 0.0
        self.s_n = self.since_check = 0
        self.s_has_last = False
        _win_init(&self.residuals, settings.window)
        for i in range(N_METHODS):
            _win_init(&self.tails[i].w, settings.calibration_window, True)
            self.tails[i].min_excess = 1.0 if i == M_FLATLINE else 0.0
            self.tails[i].has_fit = False
            self.tails[i].stale = 0
            self.tails[i].top_kept = False

    cdef void _set_period(self, object period):
        self.period_obj = period
        self.has_period = period is not None
        self.period = 0.0 if period is None else PyFloat_AsDouble(period)

    # ---- seasonal

    cdef void _bins_append(self, bint has, double v) noexcept:
        cdef Py_ssize_t i
        if self.b_count == self.b_cap:
            i = self.b_head
            self.b_head += 1
            if self.b_head == self.b_cap:
                self.b_head = 0
        else:
            i = (self.b_head + self.b_count) % self.b_cap
            self.b_count += 1
        self.b_has[i] = has
        self.b_val[i] = v

    cdef bint _bin(self, long index, double *out) noexcept:
        cdef long offset = self.current - index
        cdef Py_ssize_t i
        if offset == 0:
            if self.s_n:
                out[0] = self.s_total / <double>self.s_n
                return True
            return False
        if 0 < offset <= self.b_count:
            i = (self.b_head + self.b_count - offset) % self.b_cap
            if self.b_has[i]:
                out[0] = self.b_val[i]
                return True
        return False

    cdef bint _profile(self, long index, double *out) noexcept:
        cdef long lag = <long>rint(self.period / self.width)
        cdef double seen[8]
        cdef double v
        cdef int n = 0, j, i
        for j in range(1, SEASON_HISTORY + 1):
            if self._bin(index - j * lag, &v):
                i = n  # stable insertion: after every value not greater (sorted())
                while i > 0 and v < seen[i - 1]:
                    seen[i] = seen[i - 1]
                    i -= 1
                seen[i] = v
                n += 1
        if n < 2:
            return False
        if n % 2:
            out[0] = seen[n // 2]
        else:
            out[0] = (seen[n // 2 - 1] + seen[n // 2]) / 2.0
        return True

    cdef bint _expected(self, double ts, double *out) noexcept:
        cdef double position, first, a, b, f
        cdef bint has_a, has_b
        if not self.has_period or not self.has_current:
            return False
        position = ts / self.width - 0.5
        first = floor(position)
        has_a = self._profile(<long>first, &a)
        has_b = self._profile(<long>first + 1, &b)
        if not has_a or not has_b:
            if not has_b:
                out[0] = a
                return has_a
            out[0] = b
            return True
        f = position - first
        out[0] = a + (b - a) * f
        return True

    cdef int _close_until(self, long index) except -1:
        cdef long steps = index - self.current, i, pad
        if self.s_n:
            self._bins_append(True, self.s_total / <double>self.s_n)
        else:
            self._bins_append(False, 0.0)
        pad = steps - 1
        if self.b_cap < pad:
            pad = self.b_cap
        for i in range(pad):
            self._bins_append(False, 0.0)
        self.current = index
        self.s_total = 0.0
        self.s_n = 0
        self.since_check += steps
        if not self.fixed and self.since_check >= <long>(DAY / HOUR):
            self.since_check = 0
            period = _season_period(self._bins_list())
            if period != self.period_obj:
                self._set_period(period)
                _win_free(&self.residuals)
                _win_init(&self.residuals, self.window)
        return 0

    cdef list _bins_list(self):
        cdef Py_ssize_t i, j
        out = []
        for i in range(self.b_count):
            j = (self.b_head + i) % self.b_cap
            out.append(self.b_val[j] if self.b_has[j] else None)
        return out

    cdef int _seasonal_measure(self, double ts, double value, double *z, double *expected,
                               double *spread) except -1:
        """1 and (z, expected, spread) of the residual, or 0 while inactive."""
        cdef double base, center, s
        cdef bint has_base
        cdef long need = 10 if 10 < self.residuals.cap else self.residuals.cap
        if self.residuals.count < need:
            return 0
        has_base = self._expected(ts, &base)
        self.s_has_last = True
        self.s_last_ts = ts
        self.s_last_current = self.current
        self.s_last_has_base = has_base
        self.s_last_base = base
        if not has_base:
            return 0
        _center_spread(&self.residuals, &center, &s)
        z[0] = fabs(value - base - center) / s
        expected[0] = base + center
        spread[0] = s
        return 1

    cdef int _seasonal_add(self, double ts, double value) except -1:
        cdef double position = floor(ts / self.width), base
        cdef long index = <long>position
        cdef bint has_base
        if not self.has_current:
            self.current = index
            self.has_current = True
        elif index > self.current:
            self._close_until(index)
        if self.s_has_last and self.s_last_ts == ts and self.s_last_current == self.current:
            has_base, base = self.s_last_has_base, self.s_last_base
        else:
            has_base = self._expected(ts, &base)
        if has_base:
            _win_add(&self.residuals, value - base)
        self.s_total += value
        self.s_n += 1
        return 0

    # ---- the methods

    cdef int _value_center_spread(self, double *center, double *spread) except -1:
        if self.memo_count != self.count:
            _center_spread(&self.values, &self.memo_center, &self.memo_spread)
            self.memo_count = self.count
        center[0] = self.memo_center
        spread[0] = self.memo_spread
        return 0

    cdef inline void _put(self, int code, double stat, bint has_exp, double exp_,
                          bint has_spread, double spread) noexcept:
        cdef int i = self.nm
        self.m_code[i] = code
        self.m_stat[i] = stat
        self.m_has_exp[i] = has_exp
        self.m_exp[i] = exp_
        self.m_has_spread[i] = has_spread
        self.m_spread[i] = spread
        self.nm = i + 1

    cdef int _measure(self, double ts, double value) except -1:
        cdef int i, code
        cdef double center, spread, dt, rate, w, z, e, s, pos, neg, run
        self.nm = 0
        if self.count < self.min_history:
            return 0
        for i in range(self.n_methods):
            code = self.methods[i]
            if code == M_ROBUST_Z:
                if self.values.count:
                    self._value_center_spread(&center, &spread)
                    self._put(code, fabs(value - center) / spread, True, center, True, spread)
            elif code == M_EWMA:
                if self.e_count:
                    w = 1.0 - self.e_decay
                    s = sqrt(self.e_var / w) if w > 0.0 else 0.0
                    spread = _pmax(s, _epsilon(self.e_mean))
                    self._put(code, fabs(value - self.e_mean) / spread, True, self.e_mean,
                              True, spread)
            elif code == M_RATE:
                if not self.has_last or ts <= self.last_ts:
                    continue
                dt = ts - self.last_ts
                rate = (value - self.last_value) / dt
                if not self.learn_rates:
                    self._put(code, fabs(rate) / self.rate_threshold, True, self.last_value,
                              True, self.rate_threshold * dt)
                    continue
                if not self.rates.count:
                    continue
                _center_spread(&self.rates, &center, &spread)
                self._put(code, fabs(rate - center) / spread, True,
                          self.last_value + center * dt, True, spread * dt)
            elif code == M_SEASONAL:
                if self._seasonal_measure(ts, value, &z, &e, &s):
                    self._put(code, z, True, e, True, s)
            elif code == M_LEVEL_SHIFT:
                if self.values.count:
                    self._value_center_spread(&center, &spread)
                    if self.c_hold:
                        z = 0.0
                    else:
                        z = (value - center) / spread
                        z = _pmax(-CUSUM_CLIP, _pmin(CUSUM_CLIP, z))
                        pos = _pmax(0.0, self.c_pos + z - self.cusum_k_d)
                        neg = _pmax(0.0, self.c_neg - z - self.cusum_k_d)
                        z = _pmax(pos, neg)
                    self._put(code, z, True, center, False, 0.0)
            else:  # M_FLATLINE
                if self.has_last:
                    run = <double>(self.run + 1) if value == self.last_value else 0.0
                    self._put(code, run, False, 0.0, False, 0.0)
        return 0

    cdef double _raw_scale(self, int code) noexcept:
        if code == M_RATE and not self.learn_rates:
            return 1.0
        if code == M_LEVEL_SHIFT:
            return self.cusum_h_d
        if code == M_FLATLINE:
            return <double>self.window
        return self.z_threshold

    cdef int _verdict(self, Verdict *r) except -1:
        """SeriesDetector._verdict on the measures in self.m_*: the numbers of its Score."""
        cdef int i, best = -1, ready = 0
        cdef double q, s, best_score, p_best = 2.0, pm, p, score, threshold
        cdef Tail *tail
        r.has_p = False
        r.has_expected = False
        r.has_range = False
        r.episode = 0
        if self.nm == 0:
            r.score = 0.0
            r.anomalous = False
            r.method = -1
            return 0
        if not self.calibrate:
            best, best_score = 0, -1.0
            for i in range(self.nm):
                q = self.m_stat[i] / self._raw_scale(self.m_code[i])
                s = 1.0 - 2.0 ** -q if q > 0.0 else 0.0
                if s > best_score:
                    best, best_score = i, s
            r.score = best_score
            r.anomalous = best_score >= 0.5
            r.method = best
            threshold = self._raw_scale(self.m_code[best])
            self._explain(r, best, threshold)
            return 0
        for i in range(self.nm):
            tail = &self.tails[self.m_code[i]]
            if tail.w.count >= self.need:
                ready += 1
                pm = _tail_p(tail, self.m_stat[i])
                if pm < p_best:
                    p_best, best = pm, i
        if best < 0:
            r.score = 0.0
            r.anomalous = False
            r.method = 0
            return 0
        p = p_best * <double>ready
        if p >= 1.0:
            p, score = 1.0, 0.0
        elif p <= 0.0:
            score = 1.0
        else:
            score = _pmin(1.0, 0.5 * log(p) / self.log_flag)
        r.method = best
        r.has_p = True
        r.p = p
        r.score = score
        if score < 0.5:
            r.anomalous = False
            r.has_expected = self.m_has_exp[best]
            r.expected = self.m_exp[best]
            return 0
        r.anomalous = True
        threshold = _tail_threshold(&self.tails[self.m_code[best]],
                                    self.flag_probability / <double>ready)
        self._explain(r, best, threshold)
        return 0

    cdef inline void _explain(self, Verdict *r, int i, double threshold) noexcept:
        r.has_expected = self.m_has_exp[i]
        r.expected = self.m_exp[i]
        if self.m_has_exp[i] and self.m_has_spread[i]:
            r.has_range = True
            r.low = self.m_exp[i] - threshold * self.m_spread[i]
            r.high = self.m_exp[i] + threshold * self.m_spread[i]

    cdef object _score(self, Verdict *r, object value):
        """The Score of a verdict (``value`` is the observed object, as given)."""
        cdef int i
        if r.method < 0:
            return _Score(0.0, False, None, {})
        details = {}
        for i in range(self.nm):
            details[NAMES[self.m_code[i]]] = self.m_stat[i]
        return _Score(r.score, bool(r.anomalous), NAMES[self.m_code[r.method]], details,
                      value, r.expected if r.has_expected else None,
                      r.low if r.has_range else None, r.high if r.has_range else None,
                      r.p if r.has_p else None, r.episode)

    cdef void _episode(self, Verdict *r) noexcept:
        if r.score >= 0.5:
            self.below = 0
            if self.in_episode:
                r.anomalous = False
            else:
                self.episodes += 1
                self.in_episode = True
        elif self.in_episode:
            self.below += 1
            if self.below >= self.refractory:
                self.in_episode = False
        r.episode = self.episodes if self.in_episode else 0

    cdef int _learn(self, double ts, object ts_obj, double value, bint flagged) except -1:
        cdef int i
        cdef bint repeat
        cdef double center, spread, e, pos, neg
        if self.calibrate and not flagged:
            for i in range(self.nm):
                if self.m_code[i] != M_FLATLINE:
                    _tail_add(&self.tails[self.m_code[i]], self.m_stat[i])
        repeat = self.has_last and value == self.last_value
        if self.calibrate and self.has[M_FLATLINE] and not repeat and self.has_last:
            _tail_add(&self.tails[M_FLATLINE], <double>self.run)
        if self.has[M_LEVEL_SHIFT] and self.values.count:
            self._value_center_spread(&center, &spread)
            e = (value - center) / spread
            if self.c_hold:
                self.c_hold -= 1
            else:
                e = _pmax(-CUSUM_CLIP, _pmin(CUSUM_CLIP, e))
                pos = _pmax(0.0, self.c_pos + e - self.cusum_k_d)
                neg = _pmax(0.0, self.c_neg - e - self.cusum_k_d)
                if _pmax(pos, neg) > self.cusum_h_d:
                    self.c_pos = self.c_neg = 0.0
                    self.c_hold = self.c_holdoff
                else:
                    self.c_pos, self.c_neg = pos, neg
        if self.has[M_ROBUST_Z] or self.has[M_LEVEL_SHIFT]:
            _win_add(&self.values, value)
        if self.has[M_EWMA]:
            if self.e_count == 0:
                self.e_mean = value
            else:
                e = value - self.e_mean
                pos = self.e_alpha * e
                self.e_mean += pos
                self.e_var = (1.0 - self.e_alpha) * (self.e_var + e * pos)
                self.e_decay *= 1.0 - self.e_alpha
            self.e_count += 1
        if self.learn_rates and self.has_last:
            _win_add(&self.rates, (value - self.last_value) / (ts - self.last_ts))
        if self.has[M_SEASONAL]:
            self._seasonal_add(ts, value)
        self.run = self.run + 1 if repeat else 0
        self.count += 1
        self.has_last = True
        self.last_ts = ts
        self.last_ts_obj = ts_obj
        self.last_value = value
        return 0

    cdef void _prefetch(self) noexcept:
        """Hint the caches at this series' windows before its points are scored (the
        batch scores series after series: the next one's state is fetched meanwhile)."""
        cdef int i
        if self.has[M_ROBUST_Z] or self.has[M_LEVEL_SHIFT]:
            _win_prefetch(&self.values)
        if self.learn_rates:
            _win_prefetch(&self.rates)
        if self.has[M_SEASONAL]:
            _win_prefetch(&self.residuals)
        if self.calibrate:
            for i in range(self.n_methods):
                _win_prefetch(&self.tails[self.methods[i]].w)

    cdef int _check(self, double ts) except -1:
        """Raise KernelLimit (before any change) for a point whose seasonal bin index
        would not fit an int64."""
        if self.has[M_SEASONAL] and not fabs(ts / self.width) < INDEX_LIMIT:
            raise KernelLimit()
        return 0

    cdef object _one(self, object ts_obj, object value_obj, double ts, double value,
                     bint full, double *score):
        """SeriesDetector.score for one finite point: its Score, or (``full`` false and
        the point in order and below the flag) None, its score in ``score``."""
        cdef Verdict r
        cdef bint flagged
        self._check(ts)
        self._measure(ts, value)
        self._verdict(&r)
        if not self.has_last or ts > self.last_ts:
            flagged = r.score >= 0.5
            result = None
            if flagged or self.in_episode:
                if self.calibrate:
                    self._episode(&r)
                if flagged:
                    result = self._score(&r, value_obj)
                    self.flagged.append((ts_obj, result))
            if result is None and full:
                result = self._score(&r, value_obj)
            self._learn(ts, ts_obj, value, flagged)
            score[0] = r.score
            return result
        again = _again_of(self.flagged, ts_obj, value_obj)
        if again is not None:
            return again
        if self.calibrate:
            r.anomalous = False
            r.episode = self.episodes if self.in_episode else 0
        return self._score(&r, value_obj)

    # ---- public (SeriesDetector delegates to these)

    def score(self, ts, value):
        cdef double t = ts, v = value, sc
        if not (isfinite(v) and isfinite(t)):
            return _Score(0.0, False, None, {})
        return self._one(ts, value, t, v, True, &sc)

    def score_many(self, ts, values):
        """Scores of the points, in order; fewer than given if one hit KernelLimit (the
        caller scores the rest in Python)."""
        cdef Py_ssize_t i, n = len(ts)
        cdef double t, v, sc
        out = []
        for i in range(n):
            tso, vo = ts[i], values[i]
            t, v = tso, vo
            if not (isfinite(v) and isfinite(t)):
                out.append(_Score(0.0, False, None, {}))
                continue
            try:
                out.append(self._one(tso, vo, t, v, True, &sc))
            except KernelLimit:
                break
        return out

    def score_batch(self, ts, values):
        """(scores, {index: Score of each point scoring 0.5 or more}, points done)."""
        cdef Py_ssize_t i, n = len(ts)
        cdef double t, v, sc
        scores = []
        full = {}
        for i in range(n):
            tso, vo = ts[i], values[i]
            t, v = tso, vo
            if not (isfinite(v) and isfinite(t)):
                scores.append(0.0)
                continue
            try:
                got = self._one(tso, vo, t, v, False, &sc)
            except KernelLimit:
                return scores, full, i
            if got is None:
                scores.append(sc)
            else:
                scores.append(got.score)
                if got.score >= 0.5:
                    full[i] = got
        return scores, full, n

    def evaluate(self, ts, value):
        cdef Verdict r
        cdef double t = ts, v = value
        if not (isfinite(v) and isfinite(t)):
            return _Score(0.0, False, None, {})
        self._check(t)
        self._measure(t, v)
        self._verdict(&r)
        return self._score(&r, value)

    def accepts(self, ts, value):
        cdef double t = ts, v = value
        if not (isfinite(v) and isfinite(t)):
            return False
        return not self.has_last or t > self.last_ts

    def update(self, ts, value):
        cdef double t, v
        if self.accepts(ts, value):
            t, v = ts, value
            self._check(t)
            self._measure(t, v)
            self._learn(t, ts, v, False)

    # ---- state, in SeriesDetector.state()'s format

    def export(self):
        """The state's parts, as SeriesDetector.state() writes them."""
        cdef int i, code
        cdef Tail *t
        tails = {}
        if self.calibrate:
            for i in range(self.n_methods):
                code = self.methods[i]
                t = &self.tails[code]
                tails[NAMES[code]] = {"state": "_Tail", "slots": {
                    "window": _win_dump(&t.w), "min_excess": t.min_excess,
                    "fit": [t.fn, t.fk, t.fu, t.fm] if t.has_fit else None,
                    "stale": t.stale}}
        seasonal = None
        if self.has[M_SEASONAL]:
            seasonal = {"state": "_Seasonal", "slots": {
                "fixed": bool(self.fixed), "period": self.period_obj, "width": self.width,
                "bins": {"deque": self.b_cap, "values": self._bins_list()},
                "current": self.current if self.has_current else None,
                "total": self.s_total, "n": self.s_n, "since_check": self.since_check,
                "residuals": _win_dump(&self.residuals)}}
        return {
            "count": self.count,
            "last_ts": self.last_ts_obj if self.has_last else None,
            "last_value": self.last_value if self.has_last else None,
            "values": (_win_dump(&self.values)
                       if self.has[M_ROBUST_Z] or self.has[M_LEVEL_SHIFT] else None),
            "ewma": ({"state": "_Ewma", "slots": {
                "alpha": self.alpha_obj, "mean": self.e_mean, "var": self.e_var,
                "_decay": self.e_decay, "count": self.e_count}}
                if self.has[M_EWMA] else None),
            "rates": _win_dump(&self.rates) if self.learn_rates else None,
            "seasonal": seasonal,
            "cusum": ({"state": "_Cusum", "slots": {
                "k": self.k_obj, "h": self.h_obj, "holdoff": self.c_holdoff,
                "pos": self.c_pos, "neg": self.c_neg, "hold": self.c_hold}}
                if self.has[M_LEVEL_SHIFT] else None),
            "run": self.run,
            "tails": tails,
            "episodes": self.episodes, "in_episode": bool(self.in_episode),
            "below": self.below,
        }

    def load(self, state):
        """Take the state of SeriesDetector.state() (made by either path)."""
        cdef Tail *t
        cdef int code
        self.count = state["count"]
        self.has_last = state["last_ts"] is not None and state["last_value"] is not None
        if self.has_last:
            self.last_ts_obj = state["last_ts"]
            self.last_ts = state["last_ts"]
            self.last_value = state["last_value"]
        self.memo_count = -1
        if state["values"] is not None:
            _win_load(&self.values, state["values"]["rolling"], state["values"]["values"])
        if state["rates"] is not None:
            _win_load(&self.rates, state["rates"]["rolling"], state["rates"]["values"])
        if state["ewma"] is not None:
            s = state["ewma"]["slots"]
            self.alpha_obj = s["alpha"]
            self.e_alpha, self.e_mean, self.e_var = s["alpha"], s["mean"], s["var"]
            self.e_decay, self.e_count = s["_decay"], s["count"]
        if state["cusum"] is not None:
            s = state["cusum"]["slots"]
            self.k_obj, self.h_obj = s["k"], s["h"]
            self.cusum_k_d, self.cusum_h_d = s["k"], s["h"]
            self.c_holdoff, self.c_pos, self.c_neg, self.c_hold = (
                s["holdoff"], s["pos"], s["neg"], s["hold"])
        if state["seasonal"] is not None:
            s = state["seasonal"]["slots"]
            self.fixed = s["fixed"]
            self._set_period(s["period"])
            self.width = s["width"]
            bins = s["bins"]
            if bins["deque"] != self.b_cap:
                raise ValueError("seasonal bins of another size")
            self.b_count = self.b_head = 0
            for v in bins["values"]:
                self._bins_append(v is not None, 0.0 if v is None else v)
            self.has_current = s["current"] is not None
            self.current = s["current"] if self.has_current else 0
            self.s_total, self.s_n, self.since_check = s["total"], s["n"], s["since_check"]
            _win_load(&self.residuals, s["residuals"]["rolling"], s["residuals"]["values"])
            self.s_has_last = False
        self.run = state["run"]
        for name, tail in state["tails"].items():
            code = NAMES.index(name)
            t = &self.tails[code]
            s = tail["slots"]
            _win_load(&t.w, s["window"]["rolling"], s["window"]["values"], True)
            t.min_excess = s["min_excess"]
            fit = s["fit"]
            t.has_fit = fit is not None
            if fit is not None:
                t.fn, t.fk, t.fu, t.fm = fit
            t.stale = s["stale"]
            t.top_kept = False
        self.episodes, self.in_episode, self.below = (
            state["episodes"], state["in_episode"], state["below"])

    def sizes(self):
        """Bytes of C memory this series holds (for the memory figure)."""
        cdef int i
        cdef Py_ssize_t total = (_win_bytes(&self.values) + _win_bytes(&self.rates)
                                 + _win_bytes(&self.residuals))
        for i in range(N_METHODS):
            total += _win_bytes(&self.tails[i].w)
        if self.b_val != NULL:
            total += self.b_cap * 9
        return total


def score_columns(list series, list index, list ts, list values):
    """Score the points of many series in one call: point ``i`` is ``(ts[i], values[i])``
    of ``series[index[i]]`` (a :class:`Series`, or None: its points are left to the
    caller); each series takes its points in the order given, as its ``score_batch``.

    Returns ``(low, full, rest)``: ``(i, score)`` of each point scoring other than 0 and
    below 0.5, ``{i: Score}`` of each point scoring 0.5 or more, and ``(position, done)``
    of each series that did not take all its points (None, or a point hit KernelLimit
    after ``done`` of them): the caller scores the rest."""
    cdef Py_ssize_t n = len(index), ns = len(series), i, k, p, end
    cdef Py_ssize_t *start
    cdef Py_ssize_t *order
    cdef double t, v, sc
    cdef Series s
    if len(ts) != n or len(values) != n:
        raise ValueError("index, ts and values must have the same length")
    low = []
    full = {}
    rest = []
    start = <Py_ssize_t *>malloc((ns + 1) * sizeof(Py_ssize_t))
    order = <Py_ssize_t *>malloc((n if n else 1) * sizeof(Py_ssize_t))
    try:
        if start == NULL or order == NULL:
            raise MemoryError()
        for p in range(ns + 1):
            start[p] = 0
        for i in range(n):  # counting sort by series, stable: each series' points in order
            p = index[i]
            if p < 0 or p >= ns:
                raise IndexError("series index out of range")
            start[p + 1] += 1
        for p in range(ns):
            start[p + 1] += start[p]
        for i in range(n):
            p = index[i]
            order[start[p]] = i
            start[p] += 1
        k = 0
        for p in range(ns):  # start[p] is now the end of series p's points
            end = start[p]
            obj = series[p]
            if obj is None:
                if end > k:
                    rest.append((p, 0))
                k = end
                continue
            s = <Series?>obj
            if p + 1 < ns:  # the next series' state comes into the caches meanwhile
                nxt = series[p + 1]
                if nxt is not None:
                    (<Series?>nxt)._prefetch()
            while k < end:
                i = order[k]
                tso, vo = ts[i], values[i]
                t, v = tso, vo
                if isfinite(v) and isfinite(t):
                    try:
                        got = s._one(tso, vo, t, v, False, &sc)
                    except KernelLimit:
                        rest.append((p, k - (start[p - 1] if p else 0)))
                        k = end
                        break
                    if got is None:
                        if sc != 0.0:
                            low.append((i, sc))
                    else:
                        sc = got.score
                        if sc >= 0.5:
                            full[i] = got
                        elif sc != 0.0:
                            low.append((i, sc))
                k += 1
    finally:
        free(start)
        free(order)
    return low, full, rest


def tail_run(Py_ssize_t size, double min_excess, values, probes, ps, bint blocked=True,
             Py_ssize_t every=1):
    """For the tests: a calibrated tail of ``size`` (its sorted values in blocks when
    ``blocked`` and ``size`` is long enough) takes ``values`` one by one; after every
    ``every``-th one (and the last) with two or more values, a row of its sorted values,
    ``p`` of each of ``probes``, ``threshold`` of each of ``ps`` and its fit, as
    _Tail.add, p, threshold and fit give them."""
    cdef Tail t
    cdef Py_ssize_t step = 0, last = len(values)
    cdef double *buf
    _win_init(&t.w, size, blocked)
    t.min_excess = min_excess
    t.has_fit = False
    t.stale = 0
    t.top_kept = False
    rows = []
    try:
        for v in values:
            _tail_add(&t, v)
            step += 1
            if t.w.count < 2 or (step % every and step != last):
                continue
            got_p = [_tail_p(&t, x) for x in probes]
            got_t = [_tail_threshold(&t, p) for p in ps]
            if t.w.blocked:
                buf = <double *>malloc(t.w.count * sizeof(double))
                if buf == NULL:
                    raise MemoryError()
                _bw_flatten(&t.w, buf)
                ordered = [buf[i] for i in range(t.w.count)]
                free(buf)
            else:
                ordered = [t.w.srt[i] for i in range(t.w.count)]
            rows.append((ordered, got_p, got_t, [t.fn, t.fk, t.fu, t.fm]))
        return bool(t.w.blocked), rows
    finally:
        _win_free(&t.w)
