"""``attnlrp serve``: the explorer, a local web server that loads the model once and explains by clicking
(docs/serve.md). Prints the URL with its access token, as Jupyter does; never opens a browser itself."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from typing import Any

from .args import add_model_arguments, add_quiet, input_file, output_file, positive_int

DEFAULT_PORT = 8765
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def port_number(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {text!r}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="the explorer: a local web page that explains by clicking",
        description="Load the model once and serve the explorer on this machine: type a prompt, generate, click a "
        "token to see its heatmap, compare methods, open the layers, heads and neurons, switch neurons off and see "
        "the heatmap recomputed. Prints the URL to open (it carries the access token). Needs the serve extra: "
        "pip install 'attnlrp[serve]'.",
    )
    add_model_arguments(parser)
    parser.add_argument("--atlas", type=input_file, default=None, metavar="FILE.sqlite",
                        help="a concept atlas of the same model (attnlrp concepts build): neuron samples in the page")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"port to listen on (default: {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only; anything else makes "
                        "the explorer reachable from the network)")
    parser.add_argument("--token", default=None,
                        help="the access token every API call needs (default: a new random one at each start)")
    parser.add_argument("--export-dir", default=None, metavar="DIR",
                        help="let the page save exports (HTML, JSON) into DIR under names the server makes")
    parser.add_argument("--max-prompt-tokens", type=positive_int, default=None, metavar="N",
                        help="longest prompt accepted (default: the model's context, at most 2048)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N",
                        help="most tokens one generation may ask for (default: 128)")
    parser.add_argument("--max-steer-neurons", type=positive_int, default=64, metavar="N",
                        help="most neurons one steering request may change (default: 64)")
    parser.add_argument("--queue", type=positive_int, default=8, metavar="N",
                        help="requests that may wait for the model; more are answered 429 (default: 8)")
    parser.add_argument("--url-file", type=output_file, default=None, metavar="FILE",
                        help="also write the URL to FILE once the server accepts connections (for scripts)")
    add_quiet(parser)
    parser.set_defaults(run=run)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..extras import require

    require("starlette", "serve")  # before the model is loaded: a missing extra is said at once
    uvicorn = require("uvicorn", "serve")
    from ..serve import Limits, ServeSession, allowed_hosts, create_app
    from .args import load_model

    if not is_loopback(args.host):
        print(f"warning: --host {args.host} makes the explorer reachable from the network; anyone who has the "
              "token can run the model on this machine", file=sys.stderr)
    token = args.token or secrets.token_urlsafe(24)
    loaded = load_model(args)
    session = ServeSession.from_loaded(loaded, atlas=args.atlas, image_processor=_image_processor(args, loaded))
    limits = Limits(prompt_tokens=args.max_prompt_tokens, new_tokens=args.max_new_tokens,
                    steer_neurons=args.max_steer_neurons, queue=args.queue)

    sock = _listen(args.host, args.port)  # bound first: the Host check needs the port that --port 0 picks
    port = sock.getsockname()[1]
    try:
        app = create_app(session, token=token, allowed_hosts=allowed_hosts(port, args.host),
                         export_dir=args.export_dir, limits=limits)
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{shown_host}:{port}/?token={token}"

        class Server(uvicorn.Server):  # type: ignore[name-defined]
            """Says where it is once it accepts connections, not before."""

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                if not self.should_exit:  # the file first: a reader of the printed line may then read it
                    if args.url_file:
                        _write_atomically(args.url_file, url + "\n")
                    print(f"attnlrp explorer: {url}", flush=True)

        server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C is how the explorer is stopped
            pass
    finally:
        sock.close()
    return 0


def _listen(host: str, port: int) -> Any:
    """A socket bound to ``host:port``, with a message that says what to do when it cannot be."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port (0 picks a free "
                      "one)") from None
    return sock


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader waiting for the file never sees it half written."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def _image_processor(args: argparse.Namespace, loaded: Any) -> Any:
    """The image processor saved with an image classifier's folder, if there is one."""
    from ..models.adapter import ModelAdapter

    if ModelAdapter.of(loaded.model).head != "image-cls" or not args.model or not os.path.isdir(args.model):
        return None
    if not any(os.path.exists(os.path.join(args.model, name))
               for name in ("preprocessor_config.json", "image_processor_config.json")):
        return None
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(args.model)
