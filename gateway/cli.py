"""`llmcam serve`: the gateway under uvicorn.

A stop (Ctrl-C, SIGTERM) may come at any moment: while Ray starts, while the app starts, while
the detector deploys. From the first line on, a stop signal becomes `SystemExit`, so the
`finally` below always runs and stops the embedded Ray this process started (also one that was
only half started), and Ray's auto-init is off, so nothing can start a second Ray afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.settings import Settings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(signum)


def main(argv: list[str] | None = None) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    parser = argparse.ArgumentParser(prog="llmcam", description="llmcam camera chatbot")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded Ray)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from actors.settings import from_env

    settings = from_env(**({"ray_address": args.ray_address} if args.ray_address else {}))
    from gateway.security import is_loopback

    if settings.auth is None and not is_loopback(args.host):
        # A chat server others can reach must say who may use it (and what each may cost).
        sys.stderr.write(f"llmcam: refusing to listen on {args.host} while LLMCAM_AUTH is "
                         "unset: set LLMCAM_AUTH=oidc or proxy (or none, to let anyone in)\n")
        raise SystemExit(2)
    if not settings.llm_configured:
        logging.getLogger("llmcam").warning(
            "no LLM configured: set OPENAI_API_KEY (OpenAI's own API), or OPENAI_BASE_URL for "
            "an OpenAI-compatible server (vLLM, Ollama, llama.cpp), then restart")
    if not settings.ray_address:
        # Ray reads this when imported: an embedded Ray then binds and advertises 127.0.0.1
        # only, so a laptop's chat server exposes nothing to its network.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Read when Ray is imported: a Ray API called after `ray.shutdown()` (a straggler thread,
    # Serve) raises instead of silently starting a Ray of its own that nobody stops.
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    try:
        _serve(args, settings)
    except SystemExit as exc:
        # uvicorn re-raises the stop signal after its graceful shutdown, and our handler (or
        # Ray's) turns it into SystemExit(signum): that is the clean stop we were asked for.
        if exc.code not in STOP_SIGNALS:
            raise


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    embedded = not settings.ray_address
    try:
        import ray
        import uvicorn

        from gateway.app import create_app
        from gateway.ray_conn import connect

        # Ray is joined (or started) here, in the main thread; uvicorn then owns the stop
        # signals while it runs, and only a Ray this process started is stopped.
        if connect(settings) and sys.platform.startswith("linux"):
            from gateway import reaper

            # held until this process ends: then its Ray's last processes are ended too
            watcher = reaper.start()  # noqa: F841
        app = create_app(settings, listen_host=args.host)
        uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info",
                    timeout_graceful_shutdown=5)
    finally:
        if embedded and "ray" in sys.modules:
            for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the shutdown short
                signal.signal(signum, signal.SIG_IGN)
            import ray

            ray.shutdown()  # also a half-started one: it kills what it had spawned


if __name__ == "__main__":
    main()
