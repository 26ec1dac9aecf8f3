"""talk3d serve's interactive speed for one trained subject: live mode and the view control.

    python bench/live.py --subject demo --audio resources/demo/speech.wav

Starts the web app on a free loopback port (as ``talk3d serve`` does), then measures over real HTTP:
live mode's time to the first frame (upload, ingest, audio features and one render) and the rate
at which the following frames arrive, against the clip's frame rate (real time = 1.0); and the view
control's frame requests (yaw/pitch changed each time). Prints one table.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import uvicorn

from talk3d_core.serve.app import Studio, make_app


def start(studio: Studio) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(make_app(studio), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def live(base: str, subject: str, audio: Path, size: str) -> dict[str, float]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="size"\r\n\r\n{size}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{audio.name}"\r\n\r\n'
        ).encode()
        + audio.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}/api/s/{subject}/live", data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    started = time.perf_counter()
    arrivals, header = [], None
    with urllib.request.urlopen(request, timeout=3600) as response:
        while chunk := response.read(4):
            payload = response.read(struct.unpack(">I", chunk)[0])
            if header is None:
                header = json.loads(payload)
            else:
                arrivals.append(time.perf_counter() - started)
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else float("nan")
    return {"frames": len(arrivals), "first_s": arrivals[0], "fps": rate, "realtime": rate / header["fps"]}


def frames(base: str, subject: str, n: int = 10) -> list[float]:
    times = []
    for i in range(n):
        tick = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/s/{subject}/frame?yaw={-30 + 6 * i}&pitch=5") as response:
            response.read()
        times.append(time.perf_counter() - tick)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subject", required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--size", default="", help="output side in pixels (default: the render's)")
    args = parser.parse_args()
    studio = Studio(args.results)
    base, server = start(studio)
    try:
        frames(base, args.subject, 1)  # loads the model once, as the page's first view does
        result = live(base, args.subject, args.audio, args.size)
        view = frames(base, args.subject)
    finally:
        server.should_exit = True
    print(f"{'measure':40s} {'value':>10s}")
    print(f"{'live: frames':40s} {result['frames']:10d}")
    print(f"{'live: first frame after (s)':40s} {result['first_s']:10.3f}")
    print(f"{'live: frames/s after the first':40s} {result['fps']:10.2f}")
    print(f"{'live: real-time factor (1 = keeps up)':40s} {result['realtime']:10.2f}")
    print(f"{'view control: frame request, median (s)':40s} {statistics.median(view):10.3f}")
    print(f"{'view control: frame request, max (s)':40s} {max(view):10.3f}")


if __name__ == "__main__":
    main()
