"""Static PNG next to the live widget, so saved notebooks and rendered HTML show a picture."""

from __future__ import annotations

import base64
import io


def figure_png(draw, figsize: tuple[float, float], *, dpi: int = 96,
               layout: str | None = None) -> bytes:
    """PNG bytes of a matplotlib figure drawn by ``draw(fig)`` (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class StaticPNG:
    """Mixin (before ``anywidget.AnyWidget``): adds ``image/png`` from ``self.to_png()``."""

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = dict(data)
        try:
            data["image/png"] = base64.b64encode(self.to_png()).decode("ascii")
        except Exception as exc:  # noqa: BLE001 - the live widget must still display
            data["text/plain"] = f"{data.get('text/plain', '')} (no static picture: {exc})"
        return data, meta
