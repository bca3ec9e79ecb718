"""The Swagger UI page: served without a key, from evogate's own files only."""

import re

import pytest

from routes.docs import SWAGGER_UI_ASSETS

ABSOLUTE_URL = re.compile(r"(?:https?:)?//[^\s\"'<>]+", re.IGNORECASE)
PAGE_REFERENCE = re.compile(r"""(?:src|href|data-document-url)="([^"]*)\"""")


def test_docs_page_needs_no_key(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"


def test_docs_page_references_only_own_paths(client):
    page = client.get("/docs").get_data(as_text=True)
    references = PAGE_REFERENCE.findall(page)
    assert "/openapi.json" in references
    assert "/docs/swagger-ui-bundle.js" in references
    for reference in references:
        assert reference.startswith("/"), reference
        assert not reference.startswith("//"), reference
    assert ABSOLUTE_URL.findall(page) == []


def test_docs_script_has_no_absolute_url(client):
    with client.get("/docs/swagger-ui-init.js") as response:  # closes the file it sends
        script = response.get_data(as_text=True)
    assert "SwaggerUIBundle" in script
    assert ABSOLUTE_URL.findall(script) == []


def test_docs_page_content_security_policy(client):
    header = client.get("/docs").headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in header.split(";"))
    assert directives["default-src"] == "'self'"
    # Scripts fall back to default-src: files from this server only, no inline code.
    assert "script-src" not in directives


@pytest.mark.parametrize("filename", sorted(SWAGGER_UI_ASSETS))
def test_docs_assets_are_served(client, filename):
    with client.get(f"/docs/{filename}") as response:
        assert response.status_code == 200
        assert response.mimetype == SWAGGER_UI_ASSETS[filename][1]
        assert len(response.get_data()) > 100


@pytest.mark.parametrize("filename", ["index.html", "swagger-initializer.js", "..%2Fapp.py", "nothing.js"])
def test_docs_unknown_file_is_json_404(client, filename):
    response = client.get(f"/docs/{filename}")
    assert response.status_code == 404
    assert response.get_json()["statusCode"] == 404
