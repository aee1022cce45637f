"""The TPU backend's tests run on XLA's CPU client (PJRT_DEVICE=CPU), in the TPU stage's own
environment (torch 2.9 + torch-xla 2.9: `bash scripts/test_tpu.sh`). Where torch-xla is not
installed (the main environment, torch 2.13) they are not collected."""
import importlib.util
import os

if importlib.util.find_spec("torch_xla"):
    os.environ.setdefault("PJRT_DEVICE", "CPU")  # before torch-xla loads
    collect_ignore_glob = []
else:
    collect_ignore_glob = ["*.py"]
