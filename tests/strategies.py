"""hypothesis strategies shared by test layers: the write and truncate sequences of
tests/mount/test_sparse.py, which tests/inprocess/test_inprocess.py runs without the kernel."""

from __future__ import annotations

from hypothesis import strategies as st

MIB = 1 << 20
PART = 8 * MIB

# Offsets near the part boundaries, where parts are cut, plus a little jitter.
offsets = st.builds(
    lambda base, jitter: max(0, base + jitter),
    st.sampled_from([0, PART - 4096, PART, PART + 4096, 9 * MIB, 14 * MIB, 2 * PART, 3 * PART - 1]),
    st.integers(-70_000, 70_000),
)
# ("pwrite", offset, size, seed) and ("truncate", size)
writes_and_truncates = (
    st.tuples(st.just("pwrite"), offsets, st.integers(1, 128 << 10), st.integers(0, 2**16)),
    st.tuples(st.just("truncate"), offsets),
)
