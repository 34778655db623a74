"""plainsocket.static: content types, rules, folder indexes, conditional requests and path safety."""

from __future__ import annotations

import os
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.datastructures import Headers

from plainsocket.static import StaticFiles, StaticResponse

SECRETS = (b"TOP-SECRET", b"SIBLING-SECRET")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A public/ folder with assets, symlinks in and out, and secrets next to it."""
    (tmp_path / "secret.txt").write_bytes(b"TOP-SECRET next to public/\n")
    (tmp_path / "public-secret").mkdir()
    (tmp_path / "public-secret" / "secret.txt").write_bytes(b"SIBLING-SECRET in public-secret/\n")
    public = tmp_path / "public"
    public.mkdir()
    files = {
        "index.html": b"<!doctype html><title>home</title>\n",
        "app.js": b"console.log('app');\n",
        "mod.mjs": b"export const x = 1;\n",
        "style.css": b"body { color: red; }\n",
        "data.json": b'{"ok": true}\n',
        "prog.wasm": b"\x00asm\x01\x00\x00\x00",
        "logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>\n',
        "notes.txt": b"plain notes\n",
        "pic.PNG": b"\x89PNG\r\n\x1a\n",
        "blob.qqq": b"\x01\x02\x03",
        "LICENSE": b"MIT\n",
        "hello world.txt": b"spaced\n",
        ".env": b"PASSWORD=hunter2\n",
    }
    for name, content in files.items():
        (public / name).write_bytes(content)
    (public / "sub").mkdir()
    (public / "sub" / "index.html").write_bytes(b"<title>sub</title>\n")
    (public / "sub" / "page.html").write_bytes(b"<title>page</title>\n")
    (public / "empty-dir").mkdir()
    (public / "link-in.js").symlink_to("app.js")
    (public / "link-in-dir").symlink_to("sub", target_is_directory=True)
    (public / "link-out.txt").symlink_to(tmp_path / "secret.txt")
    (public / "link-out-dir").symlink_to("..", target_is_directory=True)
    (public / "link-sibling").symlink_to("../public-secret", target_is_directory=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.js").write_bytes(b"// other\n")
    (tmp_path / "alt").mkdir()
    (tmp_path / "alt" / "home.htm").write_bytes(b"<title>alt home</title>\n")
    return tmp_path


def get(static: StaticFiles, target: str, method: str = "GET", **headers: str) -> StaticResponse:
    """Send one request; fail the test if no rule covered it."""
    response = static.respond(method, target, Headers({name.replace("_", "-"): v for name, v in headers.items()}))
    assert response is not None, f"{target!r} not covered"
    return response


def header(response: StaticResponse, name: str) -> str | None:
    """Return the one value of a response header, or None."""
    values = [value for key, value in response.headers if key.lower() == name.lower()]
    assert len(values) <= 1, f"{name} repeated"
    return values[0] if values else None


def assets(tree: Path) -> StaticFiles:
    """The usual app: public/ at /assets."""
    return StaticFiles({"/assets": "public"}, base_dir=tree)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("index.html", "text/html; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("mod.mjs", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("data.json", "application/json"),
        ("prog.wasm", "application/wasm"),
        ("logo.svg", "image/svg+xml"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("pic.PNG", "image/png"),
        ("blob.qqq", "application/octet-stream"),
        ("LICENSE", "application/octet-stream"),
    ],
)
def test_content_type(tree: Path, name: str, content_type: str) -> None:
    """Each file gets its Content-Type, the exact bytes, and the safety and cache headers."""
    response = get(assets(tree), f"/assets/{name}")
    body = (tree / "public" / name).read_bytes()
    assert response.status == HTTPStatus.OK
    assert response.body == body
    assert header(response, "Content-Type") == content_type
    assert header(response, "Content-Length") == str(len(body))
    assert header(response, "Cache-Control") == "no-cache"
    assert header(response, "X-Content-Type-Options") == "nosniff"


def test_validators(tree: Path) -> None:
    """ETag is a quoted strong tag and Last-Modified is the file's mtime as an HTTP date."""
    response = get(assets(tree), "/assets/app.js")
    etag = header(response, "ETag")
    assert etag is not None and etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    last_modified = header(response, "Last-Modified")
    assert last_modified is not None and last_modified.endswith(" GMT")
    assert int(parsedate_to_datetime(last_modified).timestamp()) == int((tree / "public" / "app.js").stat().st_mtime)


def test_query_is_ignored(tree: Path) -> None:
    """The query string (a cache buster) does not change which file is served."""
    response = get(assets(tree), "/assets/app.js?v=3&x=/../secret.txt")
    assert response.status == HTTPStatus.OK
    assert response.body == (tree / "public" / "app.js").read_bytes()


def test_percent_encoded_name(tree: Path) -> None:
    """A percent-encoded file name is decoded once: %20 is a space."""
    response = get(assets(tree), "/assets/hello%20world.txt")
    assert response.status == HTTPStatus.OK
    assert response.body == b"spaced\n"


def test_absolute_form_target(tree: Path) -> None:
    """An absolute-form target (http://host/path) is served by its path."""
    response = get(assets(tree), "http://example.com/assets/app.js?v=1")
    assert response.status == HTTPStatus.OK
    assert response.body == (tree / "public" / "app.js").read_bytes()


def test_exact_file_rule(tree: Path) -> None:
    """A file rule serves that file at exactly its URL and covers nothing below it."""
    static = StaticFiles({"/": "public/index.html"}, base_dir=tree)
    response = get(static, "/")
    assert response.status == HTTPStatus.OK
    assert response.body == (tree / "public" / "index.html").read_bytes()
    assert header(response, "Content-Type") == "text/html; charset=utf-8"
    assert static.respond("GET", "/index.html", Headers()) is None
    assert static.respond("GET", "/app.js", Headers()) is None


def test_dict_rule_with_content_type(tree: Path) -> None:
    """{"filename": ..., "content_type": ...} serves the file with the given type, verbatim."""
    static = StaticFiles({"/notes": {"filename": "public/notes.txt", "content_type": "text/x-notes"}}, base_dir=tree)
    response = get(static, "/notes")
    assert response.status == HTTPStatus.OK
    assert response.body == b"plain notes\n"
    assert header(response, "Content-Type") == "text/x-notes"
    assert get(static, "/notes/").body == b"plain notes\n"  # a trailing slash names the same URL


def test_absolute_rule_path(tree: Path) -> None:
    """An absolute path in a rule ignores base_dir."""
    static = StaticFiles({"/assets": str(tree / "public")}, base_dir="/nonexistent-base")
    assert get(static, "/assets/app.js").status == HTTPStatus.OK


def test_base_dir_defaults_to_cwd(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths default to the working directory at construction, not at request time."""
    monkeypatch.chdir(tree)
    static = StaticFiles({"/assets": "public"})
    monkeypatch.chdir(tree / "other")
    assert get(static, "/assets/app.js").status == HTTPStatus.OK


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/assets", b"<!doctype html><title>home</title>\n"),
        ("/assets/", b"<!doctype html><title>home</title>\n"),
        ("/assets/sub/", b"<title>sub</title>\n"),
        ("/assets/link-in-dir/", b"<title>sub</title>\n"),
    ],
)
def test_directory_index(tree: Path, target: str, body: bytes) -> None:
    """A folder URL serves the folder's index.html as HTML."""
    response = get(assets(tree), target)
    assert response.status == HTTPStatus.OK
    assert response.body == body
    assert header(response, "Content-Type") == "text/html; charset=utf-8"


@pytest.mark.parametrize("target", ["/assets/empty-dir/", "/assets/empty-dir", "/assets/sub"])
def test_directory_without_index_or_slash(tree: Path, target: str) -> None:
    """A folder with no index, or a sub-folder named without its trailing slash, is 404: never a listing."""
    response = get(assets(tree), target)
    assert response.status == HTTPStatus.NOT_FOUND
    assert b"index" not in response.body and b"page" not in response.body


def test_empty_key_sets_index_name(tree: Path) -> None:
    """The "" key names the file a folder URL serves."""
    static = StaticFiles({"": "home.htm", "/alt": "alt"}, base_dir=tree)
    for target in ("/alt", "/alt/"):
        response = get(static, target)
        assert response.status == HTTPStatus.OK
        assert response.body == b"<title>alt home</title>\n"
        assert header(response, "Content-Type") == "text/html; charset=utf-8"
    assert get(StaticFiles({"/alt": "alt"}, base_dir=tree), "/alt/").status == HTTPStatus.NOT_FOUND


def test_empty_key_dict_sets_index_type(tree: Path) -> None:
    """A dict "" key gives the index file's name and its content type."""
    static = StaticFiles({"": {"filename": "home.htm", "content_type": "text/x-home"}, "/alt": "alt"}, base_dir=tree)
    response = get(static, "/alt/")
    assert response.body == b"<title>alt home</title>\n"
    assert header(response, "Content-Type") == "text/x-home"


def test_prefix_matches_at_segment_boundary(tree: Path) -> None:
    """/assets covers /assets/... but not /assets-secret/... or /assetsx."""
    static = assets(tree)
    for target in ("/assets-secret/secret.txt", "/assetsx", "/asset", "/", "/other/assets/app.js"):
        assert static.respond("GET", target, Headers()) is None, target
        assert not static.serves(target), target


def test_longest_prefix_wins(tree: Path) -> None:
    """The most specific rule answers; the others still serve what is theirs."""
    static = StaticFiles({"/": "public", "/assets": "other", "/assets/home": "alt/home.htm"}, base_dir=tree)
    assert get(static, "/assets/x.js").body == b"// other\n"
    assert get(static, "/assets/app.js").status == HTTPStatus.NOT_FOUND  # not in other/, no fallback to /
    assert get(static, "/assets/home").body == b"<title>alt home</title>\n"
    assert get(static, "/app.js").body == (tree / "public" / "app.js").read_bytes()
    assert get(static, "/assetsx").status == HTTPStatus.NOT_FOUND  # "/" serves public/assetsx: absent
    assert get(static, "/").body == (tree / "public" / "index.html").read_bytes()


def test_symlink_inside_is_served(tree: Path) -> None:
    """A symlink that stays inside the folder is followed."""
    static = assets(tree)
    assert get(static, "/assets/link-in.js").body == (tree / "public" / "app.js").read_bytes()
    assert get(static, "/assets/link-in-dir/page.html").body == b"<title>page</title>\n"


def test_symlinked_folder_is_served(tree: Path) -> None:
    """The configured folder may itself be a symlink (e.g. current -> release-2)."""
    (tree / "current").symlink_to("public", target_is_directory=True)
    static = StaticFiles({"/assets": "current"}, base_dir=tree)
    assert get(static, "/assets/app.js").status == HTTPStatus.OK
    assert get(static, "/assets/link-out.txt").status == HTTPStatus.NOT_FOUND


# "{m}" is the mount point: "/assets/" or "/" (a folder at the root covers every path).
TRAVERSALS = [
    "{m}../secret.txt",
    "{m}../../secret.txt",
    "{m}sub/../../secret.txt",
    "{m}%2e%2e/secret.txt",
    "{m}%2E%2e/secret.txt",
    "{m}%2E%2E/secret.txt",
    "{m}.%2e/secret.txt",
    "{m}%2e./secret.txt",
    "{m}..%2fsecret.txt",
    "{m}..%2Fsecret.txt",
    "{m}%2e%2e%2fsecret.txt",
    "{m}%2E%2e/%2e%2e/secret.txt",
    "{m}%2e%2e%5csecret.txt",
    "{m}..%5csecret.txt",
    "{m}..\\secret.txt",
    "{m}sub\\..\\..\\secret.txt",
    "{m}%5c..%5csecret.txt",
    "{m}sub%5c..%5c..%5csecret.txt",
    "{m}app.js%00",
    "{m}app.js%00.png",
    "{m}%00/../secret.txt",
    "{m}%252e%252e/secret.txt",
    "{m}%252e%252e%252fsecret.txt",
    "{m}%c0%ae%c0%ae/secret.txt",
    "{m}..;/secret.txt",
    "{m}./app.js",
    "{m}/etc/passwd",
    "{m}/{tree}/secret.txt",
    "{m}%2fetc/passwd",
    "{m}%2Fetc%2Fpasswd",
    "{m}%2f{tree_quoted}%2fsecret.txt",
    "{m}C:/Windows/win.ini",
    "{m}C:%5cWindows%5cwin.ini",
    "{m}c:secret.txt",
    "{m}C%3a%5csecret.txt",
    "{m}app.js::$DATA",
    "{m}link-out.txt",
    "{m}link-out-dir/secret.txt",
    "{m}link-out-dir/public-secret/secret.txt",
    "{m}link-sibling/secret.txt",
    "{m}../public-secret/secret.txt",
    "{m}%2e%2e/public-secret/secret.txt",
    "{m}.env",
    "{m}%2eenv",
    "{m}app.js/",
    "{m}app.js%0a",
    "{m}sub",
]


@pytest.mark.parametrize("mount", ["/assets", "/"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("spelling", TRAVERSALS)
def test_traversal_is_404(tree: Path, mount: str, method: str, spelling: str) -> None:
    """Every escape attempt is a plain 404 that never carries a secret's bytes."""
    static = StaticFiles({mount: "public"}, base_dir=tree)
    m = mount.rstrip("/") + "/"
    target = spelling.format(m=m, tree=str(tree).lstrip("/"), tree_quoted=quote(str(tree).lstrip("/"), safe=""))
    response = get(static, target, method)
    assert response.status == HTTPStatus.NOT_FOUND
    assert response.body in (b"not found\n", b"")
    assert not any(secret in response.body for secret in SECRETS)
    assert header(response, "ETag") is None


def test_not_found_body_and_head(tree: Path) -> None:
    """A missing file is 404 text/plain; its HEAD has the same headers and no body."""
    static = assets(tree)
    response = get(static, "/assets/missing.js")
    assert response.status == HTTPStatus.NOT_FOUND
    assert response.body == b"not found\n"
    assert header(response, "Content-Type") == "text/plain; charset=utf-8"
    head = get(static, "/assets/missing.js", "HEAD")
    assert head.status == HTTPStatus.NOT_FOUND and head.body == b""
    assert head.headers == response.headers


def test_fifo_is_404_without_blocking(tree: Path) -> None:
    """A FIFO in the folder is not a regular file: 404, and opening it must not hang."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tree / "public" / "pipe.js")
    assert get(assets(tree), "/assets/pipe.js").status == HTTPStatus.NOT_FOUND


def test_open_failure_is_404(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError while opening (EACCES even for root, EIO, ...) is a 404 too."""

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("plainsocket.static.os.open", refuse)
    response = get(assets(tree), "/assets/app.js")
    assert response.status == HTTPStatus.NOT_FOUND
    assert b"Permission" not in response.body


def test_exact_file_rule_that_became_a_folder_is_404(tree: Path) -> None:
    """A file rule whose file was replaced by a folder answers 404."""
    target = tree / "page.html"
    target.write_bytes(b"page\n")
    static = StaticFiles({"/page": "page.html"}, base_dir=tree)
    target.unlink()
    target.mkdir()
    assert get(static, "/page").status == HTTPStatus.NOT_FOUND


def test_head_has_get_headers_and_no_body(tree: Path) -> None:
    """HEAD answers the same headers as GET, Content-Length included, with an empty body."""
    static = assets(tree)
    full = get(static, "/assets/style.css")
    head = get(static, "/assets/style.css", "HEAD")
    assert head.status == HTTPStatus.OK
    assert head.body == b""
    assert head.headers == full.headers
    assert header(head, "Content-Length") == str(len(full.body)) != "0"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"])
def test_other_methods_are_405(tree: Path, method: str) -> None:
    """Methods other than GET and HEAD on a covered path answer 405 with Allow and no body."""
    static = assets(tree)
    for target in ("/assets/app.js", "/assets/missing", "/assets/../secret.txt"):
        response = get(static, target, method)
        assert response.status == HTTPStatus.METHOD_NOT_ALLOWED
        assert header(response, "Allow") == "GET, HEAD"
        assert response.body == b""
    assert static.respond(method, "/elsewhere", Headers()) is None


@pytest.mark.parametrize(
    "if_none_match",
    [
        "{etag}",
        "W/{etag}",
        '"other", {etag}',
        '"a,b", W/"x",{etag}',
        "*",
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_304(tree: Path, if_none_match: str, method: str) -> None:
    """If-None-Match with our tag (weakly compared, in a list) or * answers 304 with the ETag, no body."""
    static = assets(tree)
    etag = header(get(static, "/assets/app.js"), "ETag")
    assert etag is not None
    response = get(static, "/assets/app.js", method, if_none_match=if_none_match.format(etag=etag))
    assert response.status == HTTPStatus.NOT_MODIFIED
    assert response.body == b""
    assert header(response, "ETag") == etag
    assert header(response, "Cache-Control") == "no-cache"
    assert header(response, "Content-Length") is None


def test_if_none_match_mismatch_beats_if_modified_since(tree: Path) -> None:
    """A non-matching If-None-Match answers 200 even when If-Modified-Since alone would give 304."""
    static = assets(tree)
    future = formatdate(2**31 - 1, usegmt=True)
    assert get(static, "/assets/app.js", if_modified_since=future).status == HTTPStatus.NOT_MODIFIED
    response = get(static, "/assets/app.js", if_none_match='"stale"', if_modified_since=future)
    assert response.status == HTTPStatus.OK
    assert response.body == (tree / "public" / "app.js").read_bytes()


def test_repeated_conditional_headers(tree: Path) -> None:
    """Several If-None-Match lines are one list; several If-Modified-Since lines are ignored."""
    static = assets(tree)
    etag = header(get(static, "/assets/app.js"), "ETag") or ""
    both = Headers([("If-None-Match", '"stale"'), ("If-None-Match", etag)])
    assert (response := static.respond("GET", "/assets/app.js", both)) is not None
    assert response.status == HTTPStatus.NOT_MODIFIED
    future = formatdate(2**31 - 1, usegmt=True)
    twice = Headers([("If-Modified-Since", future), ("If-Modified-Since", future)])
    assert (response := static.respond("GET", "/assets/app.js", twice)) is not None
    assert response.status == HTTPStatus.OK


def test_if_modified_since(tree: Path) -> None:
    """If-Modified-Since at or after Last-Modified is 304; before it, or after an edit, 200 again."""
    static = assets(tree)
    path = tree / "public" / "app.js"
    os.utime(path, (1_700_000_000, 1_700_000_000))
    first = get(static, "/assets/app.js")
    last_modified = header(first, "Last-Modified")
    assert last_modified == formatdate(1_700_000_000, usegmt=True)
    assert get(static, "/assets/app.js", if_modified_since=last_modified).status == HTTPStatus.NOT_MODIFIED
    later = formatdate(1_700_000_100, usegmt=True)
    assert get(static, "/assets/app.js", "HEAD", if_modified_since=later).status == HTTPStatus.NOT_MODIFIED
    earlier = formatdate(1_699_999_999, usegmt=True)
    assert get(static, "/assets/app.js", if_modified_since=earlier).status == HTTPStatus.OK

    path.write_bytes(b"console.log('edited');\n")
    os.utime(path, (1_700_000_500, 1_700_000_500))
    edited = get(static, "/assets/app.js", if_modified_since=last_modified)
    assert edited.status == HTTPStatus.OK
    assert edited.body == b"console.log('edited');\n"  # read from disk again, no stale cache
    assert header(edited, "ETag") != header(first, "ETag")
    stale = get(static, "/assets/app.js", if_none_match=header(first, "ETag") or "")
    assert stale.status == HTTPStatus.OK


@pytest.mark.parametrize(
    "date",
    ["garbage", "", "Sun, 99 Nov 2094 08:49:37 GMT", "2094-01-01T00:00:00Z", "Sun, 06 Nov 1994 08:49:37 GMT, x"],
)
def test_malformed_if_modified_since_is_ignored(tree: Path, date: str) -> None:
    """An If-Modified-Since that is not an HTTP date is ignored: a full 200."""
    response = get(assets(tree), "/assets/app.js", if_modified_since=date)
    assert response.status == HTTPStatus.OK
    assert response.body == (tree / "public" / "app.js").read_bytes()


def test_other_date_formats_are_understood(tree: Path) -> None:
    """The obsolete RFC 850 and asctime date formats are accepted, as HTTP requires."""
    static = assets(tree)
    os.utime(tree / "public" / "app.js", (784_111_777, 784_111_777))  # Sun, 06 Nov 1994 08:49:37 GMT
    for date in ("Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"):
        assert get(static, "/assets/app.js", if_modified_since=date).status == HTTPStatus.NOT_MODIFIED, date


@pytest.mark.parametrize(
    ("config", "url_path", "expected"),
    [
        ({"/": "public/index.html"}, "/", True),
        ({"/": "public/index.html"}, "/app.js", False),
        ({"/assets": "public"}, "/", False),
        ({"/assets": "public"}, "/assets", True),
        ({"/assets": "public"}, "/assets/", True),
        ({"/assets": "public"}, "/assets/missing.js", True),
        ({"/assets": "public"}, "/assets/../secret.txt", True),  # covered, and answered 404
        ({"/assets": "public"}, "/assets/app.js?v=1", True),
        ({"/assets": "public"}, "/assets-secret/x", False),
        ({"/assets/": "public"}, "/assets/app.js", True),
        ({"/": "public"}, "/", True),
        ({"/": "public"}, "/anything/at/all", True),
        ({"": "home.htm"}, "/", False),
        ({}, "/", False),
        ({"/": "public"}, "*", False),
    ],
)
def test_serves(tree: Path, config: dict[str, str], url_path: str, expected: bool) -> None:
    """serves() tells whether a rule covers the path, exactly when respond() would answer."""
    static = StaticFiles(config, base_dir=tree)
    assert static.serves(url_path) is expected
    assert (static.respond("GET", url_path, Headers()) is not None) is expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"assets": "public"}, "starting with '/'"),
        ({"/assets": "missing-folder"}, "does not exist"),
        ({"/": {"filename": "missing.html"}}, "does not exist"),
        ({"/": {"content_type": "text/html"}}, "needs a 'filename'"),
        ({"/": {"filename": "public/index.html", "type": "text/html"}}, "unknown keys"),
        ({"/": {"filename": "public/index.html", "content_type": ""}}, "content_type"),
        ({"/assets": "public", "/assets/": "other"}, "same URL"),
        ({"/a/../b": "public"}, "'..'"),
        ({"/a//b": "public"}, "empty"),
        ({"/a?b": "public"}, "plain URL path"),
        ({"/a": ""}, "empty path"),
        ({"/a": 3}, "must map to a path"),
        ({"": "sub/index.html"}, "plain file name"),
        ({"": ".."}, "plain file name"),
    ],
)
def test_config_errors(tree: Path, config: dict[str, object], message: str) -> None:
    """A bad config fails at construction with a ValueError that says what is wrong."""
    with pytest.raises(ValueError, match=f"(?i){message.replace('?', '[?]')}"):
        StaticFiles(config, base_dir=tree)  # type: ignore[arg-type]


def test_config_error_names_the_path(tree: Path) -> None:
    """The missing-path error names the resolved path, so a wrong base_dir is obvious."""
    with pytest.raises(ValueError, match="missing-folder") as caught:
        StaticFiles({"/assets": "missing-folder"}, base_dir=tree)
    assert str(tree) in str(caught.value)
