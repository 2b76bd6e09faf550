"""Test-only launcher: run `python -m minigpt2.finetune ARGS` and SIGKILL the process right after its N-th file
replace (`os.replace`, the last step of every atomic write). `KILL_AFTER_REPLACE=N`; `REPLACE_COUNT_FILE=PATH`
receives the number of replaces of a run that was not killed. Kept out of the library on purpose."""
import os
import signal
import sys

count = 0
limit = int(os.environ.get("KILL_AFTER_REPLACE", "0"))
_replace = os.replace


def replace_then_maybe_die(src, dst, *args, **kwargs):
    global count
    _replace(src, dst, *args, **kwargs)
    count += 1
    if count == limit:
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace_then_maybe_die

if __name__ == "__main__":
    from app.finetune import main

    try:
        main(sys.argv[1:])
    finally:
        if os.environ.get("REPLACE_COUNT_FILE"):
            with open(os.environ["REPLACE_COUNT_FILE"], "w") as f:
                f.write(str(count))
