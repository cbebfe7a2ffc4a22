"""utils.tools.keep_freed_memory: glibc stops handing sampling's feature maps back to the OS."""

import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# No-grad U-Net passes over 640 rows (4 MiB feature maps), as in one sampling chunk, on one thread;
# prints the page faults of each of ten passes after three warm-ups. Both modes first hold glibc's
# initial 128 KiB mmap threshold fixed, so that every map is mapped afresh and faulted in again
# whatever the history of the heap; "keep" then calls keep_freed_memory, which must undo that.
# glibc's own default adapts that threshold as blocks are freed and lands anywhere in between: 0 to
# 12,000 faults a pass here, and a median of 0 in one CI run, so it cannot serve as the reference.
# Kept memory still faults a map in the odd early pass while the heap settles (two of four passes in
# one CI run), hence the median of ten.
SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from layers.Diffusion_layers import UNet1D
from utils.tools import keep_freed_memory
import ctypes
assert ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024) == 1  # M_MMAP_THRESHOLD, held fixed
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
net = UNet1D(7, 16, cond_dim=32, channels=(16, 32, 64)).eval()
x, z = torch.randn(640, 7, 96), torch.randn(640, 7, 16)
with torch.no_grad():
    cond = net.encode_condition(z)
    for _ in range(3):
        net(x, 500, cond)
    faults = []
    for _ in range(10):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x, 500, cond)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(*faults)
"""


def page_faults(mode: str) -> float:
    """The median page faults of a pass (a stray map in a few passes does not count)."""
    code = SCRIPT.format(root=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
    )
    return statistics.median(int(n) for n in out.stdout.split())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_keep_freed_memory_stops_refaulting_feature_maps():
    """Every 4 MiB map (960 pages) mapped afresh faults tens of thousands of pages a pass;
    kept, none in a typical pass."""
    fixed, kept = page_faults("fixed"), page_faults("keep")
    print(f"median page faults of a pass: fixed 128 KiB threshold {fixed}, kept {kept}")
    assert fixed > 10 * 960  # the measurement sees maps faulted in afresh
    assert kept < 960 / 2
