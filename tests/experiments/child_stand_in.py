"""A child for `runner.in_subprocess` tests (`python -m tests.experiments.child_stand_in MODE CODE`): a few lines
on stdout and one on stderr, its PYTHONPATH and the signal it gets when its parent dies, then exit CODE (MODE
'wait': first wait a minute, to be stopped)."""

import ctypes
import os
import sys
import time

print("to stdout", flush=True)
print("  padded  ", flush=True)
print("value X", flush=True)
print("to stderr", file=sys.stderr, flush=True)
print(f"PYTHONPATH={os.environ.get('PYTHONPATH')}", flush=True)
if sys.platform.startswith("linux"):
    sig = ctypes.c_int(-1)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
    print(f"PDEATHSIG={sig.value}", flush=True)
if sys.argv[1] == "wait":
    time.sleep(60)
sys.exit(int(sys.argv[2]))
