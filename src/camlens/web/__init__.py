"""``camlens serve``: a local web app and REST API over one loaded model (FastAPI on uvicorn).

:func:`camlens.web.app.create_app` builds the app; the pages and their JavaScript are static
files shipped in ``camlens/web/static`` (no build step)."""
