"""`llmcam serve`: the gateway under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import signal


def main(argv: list[str] | None = None) -> None:
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
    if not settings.ray_address:
        # Ray reads this when imported: an embedded Ray then binds and advertises 127.0.0.1
        # only, so a laptop's chat server exposes nothing to its network.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    import uvicorn

    from gateway.app import create_app
    from gateway.ray_conn import connect

    # Ray is joined (or started) here, in the main thread; uvicorn then owns Ctrl-C/SIGTERM,
    # and only a Ray this process started is stopped.
    started = connect(settings)
    try:
        # uvicorn's own access log would write session IDs; ours redacts them.
        uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False,
                    log_level="info", timeout_graceful_shutdown=5)
    except SystemExit as exc:
        # uvicorn re-raises the stop signal after its graceful shutdown, and Ray's handler
        # turns that into SystemExit(signum): that is the clean stop we were asked for.
        if exc.code not in (signal.SIGTERM, signal.SIGINT):
            raise
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    main()
