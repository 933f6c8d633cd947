"""Helper processes that stage a share of the users while promote stages its own.

Creating tens of thousands of inodes is kernel work that runs on several CPUs at once, but not
from threads of one Python process: each of the many short syscalls hands the GIL over, and two
threads were no faster than one (10 000 mailboxes on 2 vCPUs: 1 process 3.2 s, 2 threads
3.1 s, 2 processes 1.9 s). A helper is a fresh interpreter (`python -m
replicator.promote.helpers`) given its job as JSON on stdin and answering JSON on stdout: no
fork of a process that may have other threads (promote also runs inside the daemon), and no
dependence on how the calling program's main module is written, as multiprocessing's spawn
would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import replicator
from replicator.errors import ReplicatorError
from replicator.promote.stageuser import StagedUser, StageJob, claim, stage_user
from replicator.promote.uids import RaiseSummary
from replicator.verify.model import Difference


def spawn() -> subprocess.Popen[bytes]:
    """A helper process, its interpreter starting and its modules loading, waiting for its
    job on stdin (send())."""
    env = dict(os.environ)
    package_dir = str(Path(replicator.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_dir, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "replicator.promote.helpers"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def send(helper: subprocess.Popen[bytes], job: StageJob, users: list[str]) -> None:
    """Give a spawned helper its job: stage each of `users` it claims first
    (stageuser.claim); collect() its answer."""
    assert helper.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # it died at once: collect() says why
        helper.stdin.write(json.dumps({"job": _job_json(job), "users": users}).encode())
    with contextlib.suppress(BrokenPipeError):
        helper.stdin.close()
    helper.stdin = None  # done with: communicate() would flush the closed file


def collect(helper: subprocess.Popen[bytes]) -> list[StagedUser]:
    """The helper's staged users; its error (a ReplicatorError or an OSError there) as a
    ReplicatorError here."""
    out, err = helper.communicate()
    try:
        answer = json.loads(out) if out else {}
    except ValueError:
        answer = {}
    if helper.returncode != 0 or "staged" not in answer:
        why = answer.get("error") or err.decode(errors="replace").strip()[-2000:]
        raise ReplicatorError(why or f"promote helper exited with {helper.returncode}")
    return [_staged_from_json(item) for item in answer["staged"]]


def stop(helper: subprocess.Popen[bytes]) -> None:
    """End a helper whose work is no longer wanted (the promote failed elsewhere, or was
    refused before the helper got its job)."""
    if helper.poll() is None:
        helper.kill()
    if helper.stdin is not None:
        with contextlib.suppress(OSError):
            helper.stdin.close()
        helper.stdin = None
    helper.communicate()


def main() -> int:
    raw = sys.stdin.buffer.read()
    if not raw:  # stopped before it got a job (the promote was refused): nothing to do
        return 0
    request = json.loads(raw)
    data = request["job"]
    job = StageJob(Path(data["replica"]), {k: Path(v) for k, v in data["targets"].items()},
                   data["stage_name"], int(data["gap"]), int(data["umask"]),
                   bool(data["check"]))
    try:
        staged = [_staged_json(stage_user(job, user)) for user in request["users"]
                  if claim(job, user)]
    except (ReplicatorError, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"staged": staged}))
    return 0


def _job_json(job: StageJob) -> dict[str, Any]:
    return {"replica": str(job.replica), "targets": {k: str(v) for k, v in job.targets.items()},
            "stage_name": job.stage_name, "gap": job.gap, "umask": job.umask,
            "check": job.check}


def _staged_json(staged: StagedUser) -> dict[str, Any]:
    return {"user": staged.user, "dirs": {k: str(v) for k, v in staged.dirs.items()},
            "summary": asdict(staged.summary),
            "differences": [asdict(d) for d in staged.differences],
            "found": staged.found, "bytes_read": staged.bytes_read}


def _staged_from_json(item: dict[str, Any]) -> StagedUser:
    return StagedUser(item["user"], {k: Path(v) for k, v in item["dirs"].items()},
                      RaiseSummary(**item["summary"]),
                      [Difference(**d) for d in item["differences"]],
                      {path: None if state is None else (int(state[0]), str(state[1]))
                       for path, state in item["found"].items()}, int(item["bytes_read"]))


if __name__ == "__main__":
    raise SystemExit(main())
