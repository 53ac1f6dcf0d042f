"""Command line: flags over the environment -> Settings -> logging -> serve. Or an exec probe."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from sidecar import __version__, options
from sidecar.config import ConfigError, Settings

if TYPE_CHECKING:
    import asyncio

    from sidecar import logs

PROG = "health-sidecar"
# The exec probe runs in the sidecar's own container: loopback reaches it on any listen address.
PROBE_HOST = "127.0.0.1"
# Only a flag of `probe`: kubelet's exec timeout bounds it too; declared as the settings are.
PROBE_TIMEOUT = options.Setting(
    env="",
    field="timeout",
    type="seconds",
    default=2.0,
    above_minimum=True,
    maximum=300,
    help="seconds to wait",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Answer kubelet probes from cached PostgreSQL state. "
        "Every flag is also an environment variable (--check-interval is "
        "SIDECAR_CHECK_INTERVAL); flags win.",
        epilog=f"{PROG} probe {{ready,health,startup}}: ask a running sidecar, exit 0 when it "
        f"answers 200 (an exec probe; see {PROG} probe --help)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    for setting in options.SETTINGS:
        help_text = f"{setting.help_line} [{setting.env}]"
        parser.add_argument(setting.flag, dest=setting.env, metavar="VALUE", help=help_text)
    return parser


def _probe_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} probe",
        description="Exit 0 when the sidecar's endpoint answers 200, else 1.",
    )
    parser.add_argument("endpoint", choices=("ready", "health", "startup"))
    parser.add_argument("--host", help=f"sidecar address [SIDECAR_HOST, default {PROBE_HOST}]")
    port = options.PORT
    parser.add_argument("--port", help=f"sidecar port [{port.env}, default {port.default}]")
    parser.add_argument("--timeout", help=PROBE_TIMEOUT.help_line)
    return parser


def _with_flag(problem: str, from_flags: Mapping[str, str]) -> str:
    name, sep, rest = problem.partition(":")
    flag = from_flags.get(name)
    return f"{name} ({flag}){sep}{rest}" if flag else problem


def _fail(problems: Sequence[str]) -> int:
    for problem in problems:
        print(f"{PROG}: bad setting: {problem}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    _hold_standard_descriptors()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # Until the server's own handlers are in place, Ctrl-C ends the process as SIGTERM does
        # (by the signal, quietly): Python's KeyboardInterrupt printed a traceback from
        # whichever import it hit. An inherited SIG_IGN (a background job) is left alone.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    for ignored in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        # Their default ends the process; the server logs and ignores them once it listens
        # (README "Signals and limits"), so a HUP in the first half second must not kill it.
        signal.signal(ignored, signal.SIG_IGN)
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ if environ is None else environ)
    if args[:1] == ["probe"]:
        return _probe(args[1:], env)
    return _serve(args, env)


def _hold_standard_descriptors() -> None:
    """Put /dev/null on descriptor 0, 1 or 2 if the process was started without it (`<&-`,
    `>&-`). Else the next socket gets that number, and libuv (uvloop) aborts the process when
    it closes a descriptor under 3: SIGABRT at exit instead of 0 (tests/test_surroundings.py).
    Python has already set sys.stdout (or stdin, stderr) to None: logs go to stderr then."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            # The lowest free number: `fd` itself, as the ones below it are open by now.
            os.open(os.devnull, os.O_RDWR)


def _serve(args: list[str], env: dict[str, str]) -> int:
    given = vars(_parser().parse_args(args))
    from_flags: dict[str, str] = {}
    for setting in options.SETTINGS:
        value = given.get(setting.env)
        if value is not None:
            env[setting.env] = value
            from_flags[setting.env] = setting.flag
    try:
        settings = Settings.from_environ(env)
    except ConfigError as exc:
        # Name the flag too when the bad value came from one.
        return _fail([_with_flag(problem, from_flags) for problem in exc.problems])

    # Imported late: `probe` and config errors should not pay for aiohttp and asyncpg.
    import prometheus_client
    import structlog

    from sidecar import logs

    pipeline = logs.configure(
        level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets()
    )
    # `*_created` series double the series count and carry nothing a probe dashboard uses.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    log = structlog.get_logger("sidecar")
    for name, guess in options.unknown_variables(env):
        log.warning("sidecar.unknown_setting", variable=name, did_you_mean=guess)
    log.info(
        "sidecar.starting",
        version=__version__,
        drain_seconds=settings.drain_seconds,
        config_file=settings.config_file,
        # What each check will use, after the check file's defaults and its own keys. Names,
        # kinds, criticality and timings only: a spec also holds DSNs and URLs.
        checks=[
            {
                "name": spec.name,
                "kind": spec.kind,
                "critical": spec.critical,
                **{s.file_key: getattr(spec.policy, s.field) for s in options.PER_CHECK},
            }
            for spec in settings.check_specs
        ],
        event_loop="uvloop" if _loop_factory() else "asyncio",
    )
    _say_dropped_drivers(settings, log)
    from sidecar import pghome

    moved = pghome.make_harmless(os.environ)
    if moved is not None:
        log.info(
            "sidecar.home_moved", home=moved.home, problem=moved.problem, to=pghome.HARMLESS_HOME
        )
    try:
        return _run(settings, log, pipeline)
    finally:
        # Whatever is still buffered gets a bounded chance; a stuck pipe cannot hold the exit.
        pipeline.shutdown()


def _say_dropped_drivers(settings: Settings, log: Any) -> None:
    """Once per DSN written as postgresql+driver://: the driver part is not used."""
    from sidecar.checks.postgres import PostgresSpec
    from sidecar.inputs import split_driver

    seen: set[int] = set()
    for spec in settings.check_specs:
        if not isinstance(spec, PostgresSpec) or id(spec.target) in seen:
            continue
        seen.add(id(spec.target))
        driver = split_driver(spec.target.dsn or "")[1]
        if driver is not None:
            log.debug(
                "dsn.driver_dropped", check=spec.name, source=spec.target.source, driver=driver
            )


def _run(settings: Settings, log: Any, pipeline: logs.Pipeline) -> int:
    import asyncio  # not at the top: main() makes Ctrl-C quiet first, the sooner the better

    from sidecar.app import create_app
    from sidecar.server import serve

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            app = create_app(
                settings,
                on_secrets=lambda found: pipeline.add_secrets(*found),
                dropped_log_lines=pipeline.dropped_lines,
            )
            runner.run(serve(app, settings))
    except OSError as exc:
        # The usual cause: the port is taken. One line, no traceback.
        log.error(
            "sidecar.listen_failed",
            host=settings.host,
            port=settings.port,
            error=exc.strerror or type(exc).__name__,
        )
        return 1
    except KeyboardInterrupt:  # a signal before our handlers were installed
        return 130
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _probe(args: list[str], env: dict[str, str]) -> int:
    from sidecar.probe import probe

    given = _probe_parser().parse_args(args)
    problems = []
    # Each judged by its declaration, as the server judges them: the flag, else the variable
    # (host and port), else the default (loopback for the host).
    found: dict[str, Any] = {}
    for setting, flag_value, default in (
        (options.BY_FIELD["host"], given.host, PROBE_HOST),
        (options.PORT, given.port, options.PORT.default),
        (PROBE_TIMEOUT, given.timeout, PROBE_TIMEOUT.default),
    ):
        raw = flag_value or (setting.env and env.get(setting.env, "").strip()) or str(default)
        found[setting.field], problem = setting.parse(raw)
        if problem is not None:
            named = f"--{setting.field}" if flag_value else setting.env
            problems.append(f"{named}: {problem}")
    if problems:
        return _fail(problems)
    ok, detail = probe(given.endpoint, **found)
    print(detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
