"""Differential fuzzing of ovlfs against a plain directory (tests/fuzz_ops.py).

Every seed: a random lower tree, a few thousand random operations on the
mount and on an oracle copy in lockstep (outcomes must agree, trees are
compared every 50 operations), a remount in the middle and at the end, then
`ovlfs commit` (`--atomic` for odd seeds) and the lower must equal the
oracle.  A failure is shrunk to a minimal operation sequence; the message
gives the seed, that sequence and a standalone reproducer script.

OVLFS_FUZZ_OPS scales the number of operations per seed,
OVLFS_FUZZ_SHRINK_TIME bounds the shrinking (seconds),
OVLFS_FUZZ_REPRO_DIR is where reproducer scripts go (default /tmp).
"""

import os

import pytest

import fuzz_ops

OPS = int(os.environ.get("OVLFS_FUZZ_OPS", "3000"))
SHRINK = float(os.environ.get("OVLFS_FUZZ_SHRINK_TIME", "25"))
REPRO_DIR = os.environ.get("OVLFS_FUZZ_REPRO_DIR", "/tmp")


def _run(work, alt_work, seed, ops, **kw):
    cfg = fuzz_ops.Config(seed, ops, shrink_time=SHRINK, repro_dir=REPRO_DIR, quiet=True,
                          **kw)
    res = fuzz_ops.fuzz(cfg, fuzz_ops.Dirs(work, alt_work))
    print(res.report())
    if res.failure:
        pytest.fail(res.report(), pytrace=False)
    assert res.nops >= ops * cfg.procs * 0.99
    return res


# seed % 3 == 2: upper on another file system; odd seeds: persistent inode
# numbers and commit --atomic; even seeds: virtual numbers and plain commit
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7, 8])
def test_fuzz_seed(work, alt_work, seed):
    _run(work, alt_work, seed, OPS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [101])
def test_fuzz_procs(work, alt_work, seed):
    """Three processes at once, each on its own subtree of one mount."""
    _run(work, alt_work, seed, OPS // 2, procs=3)


@pytest.mark.timeout(120)
def test_fuzz_long_no_commit(work, alt_work):
    """A longer sequence, virtual inode numbers, upper on another file
    system, finished with a remount only (what a preserved upper shows)."""
    _run(work, alt_work, 200, OPS * 2, split=True, inode_mode="virtual", commit=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_fuzz_kernel_format(work, alt_work, seed, monkeypatch):
    """The same with the kernel format's upper (whiteouts as 0/0 devices,
    markers in trusted.overlay.*): its first 600 seeds of 400 operations
    failed four times (seeds 101, 151, 208, 457: two causes, fixed), where
    2,600 OCI seeds never met them. A reproducer wants
    OVLFS_FUZZ_MOUNT_ARGS="--format kernel" in its environment too."""
    monkeypatch.setenv("OVLFS_FUZZ_MOUNT_ARGS", "--format kernel")
    _run(work, alt_work, seed, OPS)
