"""The one output convention of every `qrjax` command (used by the `cli.py` modules only).

- stdout carries results, nothing else:
  * a batch job over inputs prints JSON Lines: one record per input, in input order, each with `status` ("ok" or
    "error") and `error` (null, or the message naming the input and the problem). A bad input never ends the run.
  * a command with a single result prints a human-readable summary, or with `--json` one compact JSON object on one
    line.
- stderr carries progress bars (tqdm), logs and the closing summary of a batch job (counts; inputs a folder scan
  passed over, by name).
- The same flag names for the same things: `--json`, `--out`, `--workdir`, `--devices`, `--seed`, `--preset`,
  `--set`, `--quiet` (no progress bars).
- A usage error (a bad flag value, an unreadable key file) ends the command at once with one line
  `<prog>: <problem>` on stderr and exit status 1; a batch job with failed inputs reports every input, then exits
  with status 1.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from typing import IO, NoReturn


def fail(prog: str, message: str) -> NoReturn:
    """End the command: `<prog>: <message>` goes to stderr and the exit status is 1."""
    raise SystemExit(f"{prog}: {message}")


def record(**fields) -> dict:
    """One batch record: `fields` plus status/error. Pass error=<message> for a failed input."""
    error = fields.pop("error", None)
    return {**fields, "status": "error" if error else "ok", "error": error}


def _plain(value):
    # JSON has no inf/nan: write them as strings, as the metric logs do
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dumps(obj) -> str:
    """Compact one-line JSON (non-finite floats as strings)."""
    return json.dumps(_plain(obj), separators=(",", ":"))


class Records:
    """Writes batch records as JSON Lines (to stdout, or appended to a file) and counts them."""

    def __init__(self, sink: IO[str] | None = None):
        self.sink = sink or sys.stdout
        self.counts = {"ok": 0, "error": 0}

    def write(self, rec: dict) -> None:
        if rec.get("status") not in ("ok", "error") or "error" not in rec:
            raise ValueError(f"a batch record needs status ok|error and an error field, got {sorted(rec)}")
        self.sink.write(dumps(rec) + "\n")
        self.sink.flush()
        self.counts[rec["status"]] += 1

    def write_all(self, recs: Iterable[dict]) -> None:
        for r in recs:
            self.write(r)

    @property
    def exit_code(self) -> int:
        return 1 if self.counts["error"] else 0


def result(obj: dict, as_json: bool, human: str | None = None) -> None:
    """Print a single result: one compact JSON object with as_json, else `human` (or the fields one per line)."""
    if as_json:
        print(dumps(obj))
    elif human is not None:
        print(human)
    else:
        width = max((len(k) for k in obj), default=0)
        for k, v in obj.items():
            print(f"{k:>{width}}: {v}")


def log(prog: str, message: str) -> None:
    """A log line on stderr."""
    print(f"{prog}: {message}", file=sys.stderr)


def passed_over(prog: str, skipped: list[str], limit: int = 20) -> None:
    """Say on stderr which files a folder scan passed over (not images by their suffix), so none goes unnoticed."""
    if skipped:
        shown = ", ".join(skipped[:limit]) + (f", ... ({len(skipped) - limit} more)" if len(skipped) > limit else "")
        log(prog, f"passed over {len(skipped)} file(s) that are not images: {shown}")


def passed_over_in(prog: str, folder) -> None:
    """passed_over for a data folder a command reads (e.g. training images); nothing for None (bundled data)."""
    if folder is not None:
        from pathlib import Path

        from qrjax.data import scan_folder

        if Path(folder).is_dir():
            passed_over(prog, [str(p) for p in scan_folder(folder)[1]])


def use_devices(prog: str, devices: int | None) -> None:
    """--devices N: N simulated CPU devices on a CPU backend (before JAX starts; see qrjax.parallel.use_cpu_devices);
    too few devices ends the command with the reason. None: leave the devices as they are."""
    if devices is None:
        return
    from qrjax.parallel import use_cpu_devices

    try:
        use_cpu_devices(devices)
    except ValueError as err:
        fail(prog, str(err))


def overrides(sets: list[str], **flags) -> list[str]:
    """The --set KEY=VALUE list followed by `key=value` for every dedicated flag that was given (not None): the
    flags win, as later --set items do."""
    return list(sets) + [f"{key}={value}" for key, value in flags.items() if value is not None]


def add_train_arguments(parser, presets: dict, default: str = "cpu") -> None:
    """The arguments every `qrjax <system> train` takes: --preset, --workdir, --data, --set, --json."""
    from pathlib import Path

    parser.add_argument("--preset", default=default, help=" | ".join(presets))
    parser.add_argument("--workdir", required=True, type=Path, help="checkpoints, metrics and the exported model")
    parser.add_argument("--data", type=Path, default=None,
                        help="image folder (default: the images bundled in the wheels)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--json", action="store_true", help="print one compact JSON object")


def train_command(prog: str, args, get_config, train_and_evaluate, **kwargs) -> int:
    """What every `qrjax <system> train` does: the config from --preset and --set, the data folder's passed-over files
    named, `train_and_evaluate(config, workdir, data=..., **kwargs)`, and the result (the exported model's stem)."""
    from pathlib import Path

    try:
        config = get_config(args.preset, args.set)
    except ValueError as err:
        fail(prog, str(err))
    passed_over_in(prog, args.data)
    try:
        train_and_evaluate(config, args.workdir, data=args.data, **kwargs)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        fail(prog, str(err))
    model = Path(args.workdir) / "model"
    result({"workdir": str(args.workdir), "model": str(model), "preset": config.name, "steps": config.steps},
           args.json, f"{prog}: {config.steps} steps done; model {model}.json")
    return 0
