"""`/docs`: Swagger UI over `/openapi.json`, its assets served by this app (works offline).

The assets are the Swagger UI distribution shipped inside the `flask-swagger-ui` package; no
page or script is fetched from anywhere else.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, send_from_directory, url_for
from werkzeug.exceptions import NotFound

from api.openapi import openapi_document

blueprint = Blueprint("docs", __name__)

DOCS_PREFIX = "/docs"
ASSET_PACKAGE = "flask_swagger_ui"
ASSETS = frozenset({"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Async Task Runner API</title>
  <link rel="stylesheet" href="{css}">
  <link rel="stylesheet" href="{index_css}">
  <link rel="icon" type="image/png" href="{icon}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script>
    window.onload = function () {{
      window.ui = SwaggerUIBundle({{
        url: {spec},
        dom_id: "#swagger-ui",
        deepLinking: true,
        persistAuthorization: true,
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout"
      }});
    }};
  </script>
</body>
</html>
"""


def asset_folder() -> Path | None:
    """Where the installed Swagger UI distribution is, or None when the package is missing."""
    found = importlib.util.find_spec(ASSET_PACKAGE)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations))) / "dist"
    return folder if folder.is_dir() else None


@blueprint.get(DOCS_PREFIX)
def docs_page() -> Response:
    """Swagger UI for this API."""
    page = PAGE.format(
        css=url_for("docs.asset", name="swagger-ui.css"),
        index_css=url_for("docs.asset", name="index.css"),
        icon=url_for("docs.asset", name="favicon-32x32.png"),
        bundle=url_for("docs.asset", name="swagger-ui-bundle.js"),
        spec=json.dumps(url_for("docs.docs_openapi_document")),
    )
    return Response(page, mimetype="text/html")


@blueprint.get(f"{DOCS_PREFIX}/openapi.json")
def docs_openapi_document() -> dict[str, Any]:
    """The OpenAPI document again, under /docs: a browser that logged in for /docs can fetch it."""
    return openapi_document()


@blueprint.get(f"{DOCS_PREFIX}/assets/<name>")
def asset(name: str) -> Response:
    """One Swagger UI file (cached a day: the package version pins its content)."""
    folder = asset_folder()
    if name not in ASSETS or folder is None:
        raise NotFound(f"No documentation asset is named {name!r}.")
    return send_from_directory(folder, name, max_age=86400)
