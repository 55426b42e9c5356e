"""`hpsearch` entry point. Each subcommand imports only what it needs, so a GPU machine with
just the worker's dependencies can run `hpsearch worker`, and a laptop with just httpx can
submit and watch studies."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence

from cli import slurm

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0.1:  # also refuses nan
        raise argparse.ArgumentTypeError("must be at least 0.1")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# As the server checks them (service/keys.py): the CLI imports nothing from the server.
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/+-]{0,128}")


def _label(text: str) -> tuple[str, str]:
    """--label KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. gpu=h100)")
    if not _LABEL_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(
            f"label key {key!r}: letters, digits and . _ / - (at most 63, starting with a "
            "letter or digit)"
        )
    if not _LABEL_VALUE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"label value {value!r}: letters, digits and . _ : / + - (at most 128)"
        )
    return key, value


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("HPSEARCH_SERVER", DEFAULT_SERVER),
        help="server URL (env HPSEARCH_SERVER; default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("HPSEARCH_TOKEN"),
        help="API token when the server has tokens on (env HPSEARCH_TOKEN)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for fine-tuning pretrained models.",
    )
    parser.add_argument("--log-level", default=os.environ.get("HPSEARCH_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the study service and the Optuna dashboard")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--storage", help="SQLAlchemy URL (env HPSEARCH_STORAGE; default SQLite)")
    serve.add_argument("--data-dir", help="SQLite file and artifacts (env HPSEARCH_DATA_DIR)")
    serve.add_argument("--artifacts", help="artifact folder or s3://bucket (HPSEARCH_ARTIFACTS)")
    serve.add_argument("--workers", type=_positive, default=1, help="server processes")
    serve.add_argument(
        "--heartbeat-interval", type=_seconds, help="seconds (env HPSEARCH_HEARTBEAT_INTERVAL)"
    )
    serve.add_argument("--lease-grace", type=_seconds, help="seconds (env HPSEARCH_LEASE_GRACE)")
    serve.add_argument("--max-retries", type=int, help="retries of a trial whose worker died")
    serve.add_argument("--public-url", help="base URL users reach the server at")
    serve.set_defaults(run="cli.serve:run")

    worker = sub.add_parser("worker", help="pull trials from the server and fine-tune")
    _client_flags(worker)
    worker.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    worker.add_argument("--gpus", help="all | 0,1,...: one worker process per GPU")
    worker.add_argument("--processes", type=_positive, help="N worker processes on the CPU")
    worker.add_argument(
        "--trials-per-gpu",
        type=_positive,
        default=1,
        help="trials run side by side on each device (small models)",
    )
    worker.add_argument("--study", help="only run trials of this study")
    worker.add_argument(
        "--label",
        type=_label,
        action="append",
        metavar="KEY=VALUE",
        help="a label of this worker, e.g. gpu=h100 (repeatable); a study whose scheduling "
        "requires labels gets only workers that have them",
    )
    worker.add_argument("--max-trials", type=_positive, help="exit after this many trials")
    worker.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit when the server has nothing to run instead of waiting",
    )
    worker.add_argument("--worker-id", help="default: host-pid[-device]")
    worker.add_argument("--threads", type=_positive, help="CPU threads per worker process")
    worker.set_defaults(run="cli.worker_cmd:run")

    submit = sub.add_parser("submit", help="create a study from a YAML or JSON file")
    _client_flags(submit)
    submit.add_argument("file", help="study spec (YAML or JSON)")
    submit.add_argument("--name", help="override the spec's name")
    submit.add_argument(
        "--warm-start",
        metavar="STUDY",
        help="start from this earlier study's best configurations (sets warm_start.study)",
    )
    submit.set_defaults(run="cli.commands:submit")

    status = sub.add_parser("status", help="a table of studies, or of one study's trials")
    _client_flags(status)
    status.add_argument("study", nargs="?")
    status.set_defaults(run="cli.commands:status")

    watch = sub.add_parser("watch", help="live view of a study until it ends")
    _client_flags(watch)
    watch.add_argument("study")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    watch.set_defaults(run="cli.commands:watch")

    best = sub.add_parser("best", help="the best configurations of a study")
    _client_flags(best)
    best.add_argument("study")
    best.add_argument(
        "-k", type=_positive, default=None, help="how many trials (default 5; 1 with --format yaml)"
    )
    best.add_argument("--format", choices=("table", "json", "yaml"), default="table")
    best.set_defaults(run="cli.commands:best")

    workers = sub.add_parser("workers", help="connected workers")
    _client_flags(workers)
    workers.set_defaults(run="cli.commands:workers")

    extend = sub.add_parser("extend", help="give a study more trials (a done one runs again)")
    _client_flags(extend)
    extend.add_argument("study")
    budget = extend.add_mutually_exclusive_group(required=True)
    budget.add_argument("--trials", type=_positive, metavar="N", help="N more trials")
    budget.add_argument(
        "--total", type=_positive, metavar="N", help="a budget of N trials in all (may lower it)"
    )
    extend.set_defaults(run="cli.commands:extend")

    stop = sub.add_parser("stop", help="stop handing out trials of a study")
    _client_flags(stop)
    stop.add_argument("study")
    stop.add_argument(
        "--cancel-running",
        action="store_true",
        help="also hand back the running trials (resume runs them on from their last checkpoints)",
    )
    stop.set_defaults(run="cli.commands:stop")

    resume = sub.add_parser("resume", help="hand out trials of a stopped study again")
    _client_flags(resume)
    resume.add_argument("study")
    resume.set_defaults(run="cli.commands:resume")

    delete = sub.add_parser("delete", help="delete a study and its artifacts")
    _client_flags(delete)
    delete.add_argument("study")
    delete.set_defaults(run="cli.commands:delete")

    slurm.add_parser(sub, _client_flags, _positive)

    demo = sub.add_parser("demo", help="run the whole product on this machine (CPU, no network)")
    demo.add_argument("--port", type=int, default=8765)
    demo.add_argument("--data-dir", default=".hpsearch/demo")
    demo.add_argument("--workers", type=_positive, default=2)
    demo.add_argument("--trials", type=_positive, default=8)
    demo.add_argument("--epochs", type=_positive, default=4)
    demo.add_argument("--keep-serving", action="store_true", help="keep the server up at the end")
    demo.set_defaults(run="cli.demo:run")
    return parser


def _load(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, func = target.partition(":")
    module = __import__(module_name, fromlist=[func])
    return getattr(module, func)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    from cli.errors import CliError

    try:
        return _load(args.run)(args) or 0
    except CliError as exc:
        print(f"hpsearch {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
