"""``sxlab live demo``: replay the demo run and process it live with the embedded broker."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

__all__ = ["live_demo"]


def live_demo(*, frames: int | None = None, rate: float = 50.0, fmt: str = "stream2",
              n_workers: int = 2, out=None, dataset: str = "lysozyme-demo",
              progress: bool = True):
    """Replay ``dataset`` on a loopback port and process it with :func:`run_live`.

    The data set is generated once (see :mod:`sxlab.datasets`); its processing
    parameters are those of ``make demo``. Returns the
    :class:`~sxlab.live.supervisor.LiveRunSummary`.

    Examples
    --------
    >>> summary = live_demo(frames=40, progress=False)  # doctest: +SKIP
    >>> summary.results.summary()  # doctest: +SKIP
    """
    from sxlab import datasets
    from sxlab.demo import demo_params

    from .replay import Replay
    from .server import free_port
    from .supervisor import run_live

    run = datasets.load(dataset, progress=progress)
    params = demo_params(datasets.truth(dataset))
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="sxlab-live-"))
    out.mkdir(parents=True, exist_ok=True)
    params_path = out / "trial.toml"
    params.save(params_path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    replay = Replay(run, endpoint=endpoint, rate=rate, fmt=fmt, frames=frames)
    ready = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=replay.serve, args=(stop,), kwargs={"ready": ready},
                              name="sxlab-replay", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        return run_live(endpoint, params_path, out / "results", n_workers=n_workers,
                        progress=progress)
    finally:
        stop.set()
        thread.join(5)
