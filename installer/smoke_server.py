"""Serve a random-weight checkpoint of a catalog model on 127.0.0.1, laid out as restorer
recognises the release (the shipped tensor layouts), for installer/smoke.sh: the built app
downloads it through its Download-and-restore button (RESTORER_MIRROR), fills the shipped
template and restores with it, without torch. Prints the mirror URL, then serves until killed.

    python installer/smoke_server.py MODEL_ID
"""

from __future__ import annotations

import functools
import http.server
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restorer.zoo.catalog import load_catalog  # noqa: E402
from restorer.zoo.layout import weights_file  # noqa: E402
from restorer.zoo.recognise import signature  # noqa: E402


def main(model_id: str) -> None:
    spec = load_catalog().get(model_id)
    rng = np.random.default_rng(0)
    tensors = {name: (rng.standard_normal(shape) * 0.02).astype(np.float32) for name, shape in signature(spec).items()}
    folder = Path(tempfile.mkdtemp(prefix="restorer-smoke-"))
    # safetensors bytes under the release's file name: restorer reads a checkpoint by its content
    save_file(tensors, folder / weights_file(spec).name)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
