"""`streammoe run` in a process that SIGKILLs itself at a chosen point (driven by test_crash.py).

CRASH_POINT names where to die, CRASH_AFTER on which occurrence; CRASH_LEDGER is a JSON-lines file where the
worker notes every checkpoint it completed and the state it restored, so the test can tell whether a restart
came back to the last good checkpoint. CRASH_PACE_S slows each scored batch so a run spans a few batches.
With no CRASH_POINT the worker runs until SIGTERM, like the daemon.

Points:
  score            after a batch is scored, before it is learned or published
  learn            after the model learned a batch, before its outputs are published
  outputs_acked    after the broker acknowledged a batch's outputs, before its offsets are stored
  commit           just before an offset commit
  checkpoint_write while a checkpoint's files are written (the temporary directory is half full)
  checkpoint_swap  between the two renames of a checkpoint save (the old model moved aside, the new not yet in)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from streammoe.daemon import service as daemon
from streammoe.kafka.source import Source
from streammoe.model.detector import MixtureDetector
from streammoe.state import checkpoint, persistence

POINT = os.environ.get("CRASH_POINT", "")
AFTER = int(os.environ.get("CRASH_AFTER", "1"))
PACE_S = float(os.environ.get("CRASH_PACE_S", "0"))
LEDGER = Path(os.environ["CRASH_LEDGER"])
_seen = 0


def note(event: str, **fields: Any) -> None:
    with LEDGER.open("a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def maybe_die(point: str) -> None:
    global _seen
    if point != POINT:
        return
    _seen += 1
    if _seen >= AFTER:
        note("kill", point=point)
        os.kill(os.getpid(), signal.SIGKILL)


def state_fields(state: checkpoint.ModelState) -> dict[str, Any]:
    return {"origin": state.origin, "version": state.version, "learned_offsets": state.learned_offsets}


def wrap(
    owner: Any,
    name: str,
    before: str | None = None,
    after: str | None = None,
    then: Callable[[Any, tuple], None] | None = None,
) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before:
            maybe_die(before)
        result = original(*args, **kwargs)
        if then is not None:
            then(result, args)
        if after:
            maybe_die(after)
        return result

    setattr(owner, name, wrapped)


def paced(result: Any, args: tuple) -> None:
    time.sleep(PACE_S)


def saved(result: Any, args: tuple) -> None:
    if result is not None:
        note("saved", **state_fields(args[1]))


def restored(result: Any, args: tuple) -> None:
    note("restored", **state_fields(result))


real_rename = os.rename


def rename(src: Any, dst: Any) -> None:
    real_rename(src, dst)
    if Path(dst).name.endswith(".old"):  # the first of a save's two renames: the new model is not in place yet
        maybe_die("checkpoint_swap")


wrap(MixtureDetector, "score_many", after="score", then=paced)
wrap(MixtureDetector, "learn_many", after="learn")
wrap(Source, "mark_done", before="outputs_acked")
wrap(Source, "commit", before="commit")
wrap(checkpoint.Checkpointer, "save", then=saved)
wrap(checkpoint.Checkpointer, "restore", then=restored)
wrap(torch, "save", before="checkpoint_write")
persistence.os.rename = rename  # type: ignore[attr-defined]

if __name__ == "__main__":
    sys.exit(daemon.cmd_run(daemon.argparse.Namespace(env_file=None)))
