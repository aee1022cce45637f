"""After keep_freed_memory(), a step's fresh big tensors reuse freed memory: no new page faults."""
import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from octavo_cpu.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(256, 49152)  # 48 MiB: above glibc's 32 MiB ceiling for reusing freed mmap-sized blocks
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_step()
print(min(faults_of_a_step() for _ in range(5)))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    assert _faults("default") > 10000  # 48 MiB of fresh pages, every time
    assert _faults("tuned") < 50
