"""Serve the web app and one bundle on localhost (Python standard library only).

    python apps/web/serve.py BUNDLE_DIR [--port 8000]     then open http://127.0.0.1:8000/

Routes: ``/`` the page (this folder), ``/bundle/`` the bundle folder (manifest.json + graphs), ``/ort/``
onnxruntime-web's dist folder from ``node_modules`` (``npm ci`` in this folder installs it). Every response is
cross-origin isolated (COOP/COEP) so onnxruntime-web may use WASM threads, and is not cached (a re-exported
bundle is picked up on reload).
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import cast

HERE = Path(__file__).resolve().parent
ORT_DIST = HERE / "node_modules" / "onnxruntime-web" / "dist"
PAGE_FILES = ("index.html", "app.js", "host.js")


class BundleServer(http.server.ThreadingHTTPServer):
    """The page's server: URL prefix -> folder routes (the bundle, onnxruntime-web) and whether to log requests."""

    routes: list[tuple[str, Path]]
    quiet: bool = False
    daemon_threads = True


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".json": "application/json"}

    def translate_path(self, path: str) -> str:
        """URL path -> file: /bundle/... and /ort/... map to their folders, anything else to the page files."""
        url = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        for prefix, root in cast(BundleServer, self.server).routes:  # make_server pairs this handler with one
            if url.startswith(prefix):
                parts = [p for p in url[len(prefix):].split("/") if p not in ("", ".", "..")]
                target = root.joinpath(*parts)
                # a symlink in the bundle must not serve files from outside it (issue 13)
                return str(target) if target.resolve().is_relative_to(root.resolve()) else str(HERE / "__not_served__")
        name = url.strip("/") or "index.html"
        return str(HERE / name) if name in PAGE_FILES else str(HERE / "__not_served__")

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


def make_server(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False) -> BundleServer:
    """A server for ``bundle`` (port 0 = any free port: read it from ``server.server_address``)."""
    bundle = Path(bundle).resolve()
    if not (bundle / "manifest.json").is_file():
        raise FileNotFoundError(f"{bundle} is not a rapsam-edge bundle (no manifest.json); "
                                "make one with `rapsam-edge export --target onnx`.")
    if not ORT_DIST.is_dir():
        raise FileNotFoundError(f"onnxruntime-web is not installed in {HERE / 'node_modules'}; "
                                f"run `npm ci` in {HERE}.")
    server = BundleServer((host, port), Handler)
    server.routes = [("/bundle/", bundle), ("/ort/", ORT_DIST)]
    server.quiet = quiet
    return server


def random_init(bundle: str | Path) -> bool:
    """Whether the bundle's manifest says its weights are a seeded random init (no checkpoint)."""
    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return bool((manifest.get("model") or {}).get("random_init"))


def serve_in_background(bundle: str | Path) -> tuple[BundleServer, str]:
    """Start a quiet server on a free localhost port in a daemon thread; returns (server, base URL)."""
    server = make_server(bundle, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    assert isinstance(host, str)  # an AF_INET server's address is (host text, port)
    return server, f"http://{host}:{port}/"


EXAMPLES = """examples:
  npm ci --prefix apps/web && python3 apps/web/serve.py bundles/rapsam_r18_lite
      install onnxruntime-web once, then serve the page and the bundle; open http://127.0.0.1:8000/
  python3 apps/web/serve.py bundles/rapsam_r18_lite --host 0.0.0.0 --port 8080
      reachable from other machines of the network, on port 8080

Page URL parameters: ?precision=fp16, ?ep=wasm|webgpu, ?threads=N. See apps/web/README.md."""
RANDOM_WEIGHTS = ("RANDOM WEIGHTS: the bundle was exported without a checkpoint (seeded random init), so its masks "
                  "and labels are meaningless (the page says so too); export a trained --checkpoint to segment.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the click-to-segment web page and one bundle's ONNX graphs on "
                                             "this machine\n(Python standard library only).",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="bundle folder written by `rapsam-edge export --target onnx`")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                                                        "only)")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on, 0 = any free one (default: "
                                                           "%(default)s)")
    args = ap.parse_args(argv)
    try:
        server = make_server(args.bundle, args.host, args.port)
    except (FileNotFoundError, OSError) as e:
        sys.exit(f"error: {e}")
    if random_init(args.bundle):
        print(f"note: {RANDOM_WEIGHTS}", file=sys.stderr)
    print(f"serving {args.bundle} at http://{args.host}:{server.server_address[1]}/ (Ctrl+C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
