"""The dashboard at GET / and its assets under /static/ (SPEC §9): files shipped inside the
package (package data), so an installed server needs no CDN and no npm step."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX = STATIC_DIR / "index.html"


async def index(request: web.Request) -> web.FileResponse:
    # no-cache: a wall screen reloaded after an upgrade gets the new page, not a stale one.
    return web.FileResponse(INDEX, headers={"Cache-Control": "no-cache"})


def setup_dashboard(app: web.Application) -> list[web.AbstractRoute]:
    routes = [app.router.add_get("/", index)]
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    return routes
