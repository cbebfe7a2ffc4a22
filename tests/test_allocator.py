"""utils.tools.keep_freed_memory: glibc stops handing sampling's feature maps back to the OS."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A no-grad U-Net pass over 640 rows (4 MiB feature maps), as in one sampling chunk; prints
# the page faults of the last three passes.
SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from layers.Diffusion_layers import UNet1D
from utils.tools import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
net = UNet1D(7, 16, cond_dim=32, channels=(16, 32, 64)).eval()
x, z = torch.randn(640, 7, 96), torch.randn(640, 7, 16)
with torch.no_grad():
    cond = net.encode_condition(z)
    for _ in range(2):
        net(x, 500, cond)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        net(x, 500, cond)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def page_faults(mode: str) -> int:
    code = SCRIPT.format(root=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_keep_freed_memory_stops_refaulting_feature_maps():
    default, kept = page_faults("default"), page_faults("keep")
    print(f"page faults over 3 passes: default {default}, keep_freed_memory {kept}")
    assert kept * 5 < default
