"""``camlens serve``: the local web app and REST API (the ``camlens[web]`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camlens.cli.common import DeviceOpt, LabelsOpt, ModelOpt, WeightsOpt, app, err_console, open_lens, out_console
from camlens.errors import CamlensError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    labels: LabelsOpt = None,
    root: Annotated[Path | None, typer.Option("--root", help="A folder whose images the app may open by path "
                                                             "(nothing outside it); default: uploads only.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface, "
                                                     "with no authentication).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    device: DeviceOpt = "auto",
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest upload accepted.")] = 20.0,
) -> None:
    """A local web app and REST API (/api/, OpenAPI docs at /docs) over one model: drop a photo,
    see its predictions, click a class, compare methods and layers, recolour maps live."""
    try:
        import uvicorn

        from camlens.web.app import Settings, create_app
    except ImportError as exc:
        raise CamlensError(f"camlens serve needs the web extra: pip install 'camlens[web]' ({exc.name} is missing)") from None
    if root is not None and not root.is_dir():
        raise CamlensError(f"--root {root}: not a folder")
    settings = Settings(model=model, weights=weights, labels=labels, device=device, root=root,
                        max_upload=int(max_upload_mb * 2**20), host=host)
    lens = open_lens(model, weights, labels, device)
    web = create_app(settings, lens)
    if host not in LOCAL_HOSTS:
        err_console.print(f"warning: listening on {host}: the app has no authentication; anyone who can reach this "
                          "address can use the model" + (" and read the images under --root" if root else ""), soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    out_console.print(f"camlens serving {model} at http://{shown}:{port}/ (Ctrl-C stops)", soft_wrap=True)
    uvicorn.run(web, host=host, port=port, log_level="warning")
