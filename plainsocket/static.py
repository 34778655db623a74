"""Serve an app's static files on the server's HTTP side, safely.

The configuration is python-socketio's ``static_files`` mapping (python-engineio's semantics)::

    {
        "/": "index.html",                                   # one file at one URL
        "/about": {"filename": "about.txt", "content_type": "text/plain"},
        "/assets": "public",                                 # a folder: /assets/app.js -> public/app.js
        "": "index.html",                                    # the file a folder URL serves (the default)
    }

The safety model is Starlette's ``StaticFiles``: the request path is percent-decoded once and
checked segment by segment, the file is resolved with :func:`os.path.realpath`, and it is served
only when :func:`os.path.commonpath` shows it is still inside the configured folder. Every refusal
is a plain 404 that says nothing about why, so probing learns nothing. Dotfiles and dot-folders
(``.env``, ``.git/``) are refused too: a folder copied whole should not publish them.

The trust boundary: the request is hostile, the configured folders are not. A symlink inside a
folder is followed only while it stays inside; an attacker who can write into the folder is out
of scope (resolving and then opening is not atomic against someone renaming directories).

Pure and synchronous: no asyncio, no sockets; files are read from disk on every request, so a
page edited during development is served fresh, and conditional requests (``ETag`` /
``If-None-Match``, ``Last-Modified`` / ``If-Modified-Since``) keep that cheap. Files are read
whole: this is meant for an app's pages and assets, not for large downloads (no ranges, no
streaming).
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers

__all__ = ["StaticFiles", "StaticResponse"]

DEFAULT_INDEX = "index.html"
ALLOWED_METHODS = ("GET", "HEAD")

# A fixed table first: mimetypes' answer depends on the machine's /etc/mime.types (or the
# Windows registry), and a server must not label app.js differently from one host to the next.
_CONTENT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",  # RFC 9239: text/javascript, not application/javascript
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",  # source maps
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",  # browsers refuse WebAssembly.instantiateStreaming without it
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".xml": "text/xml",
    ".gz": "application/gzip",
    ".zip": "application/zip",
    ".pdf": "application/pdf",
}
# Python's built-in table only: a MimeTypes() instance does not read the system's files.
_BUILTIN_TYPES = mimetypes.MimeTypes()
_FALLBACK_TYPE = "application/octet-stream"

# Left over after the single decode, these mean the client (or a proxy) encoded twice: a
# second decoder somewhere would turn them into separators or "..", so refuse them outright.
_ENCODED_LEFTOVER = re.compile(r"%(?:2e|2f|5c|00)", re.IGNORECASE)
# An origin-form target starts with "/"; the absolute form ("http://host/path") must be
# accepted too (RFC 9112 section 3.2.2). Anything else ("*", garbage) is not a file request.
_ABSOLUTE_FORM = re.compile(r"^https?://", re.IGNORECASE)
# One entity-tag, strong or weak; matched as a whole so a comma inside quotes cannot split it.
_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')

# The open flags that keep a request from blocking or wandering: O_NONBLOCK so a FIFO that
# slipped past the stat check cannot hang the event loop, O_NOFOLLOW so a symlink swapped in
# after realpath is refused. getattr: Windows has neither (and needs O_BINARY instead).
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

_NOT_FOUND_BODY = b"not found\n"


@dataclass(frozen=True, slots=True)
class StaticResponse:
    """An HTTP response for the server to send as it is."""

    status: HTTPStatus
    headers: list[tuple[str, str]]
    body: bytes  # b"" for HEAD, 304 and 405


@dataclass(frozen=True, slots=True)
class _Rule:
    """One configured URL: a file served at exactly ``segments``, or a folder under them."""

    segments: tuple[str, ...]  # the URL path's decoded segments: "/assets" -> ("assets",), "/" -> ()
    path: str  # absolute, not resolved: a symlinked folder is re-resolved on every request
    is_dir: bool
    content_type: str | None


class StaticFiles:
    """Answer GET and HEAD for the files and folders of a ``static_files`` mapping.

    Meant for an app's pages and assets, not for large downloads: every response reads its
    file whole, from disk, on each request.
    """

    def __init__(self, config: Mapping[str, str | Mapping[str, str]], *, base_dir: str | Path = ".") -> None:
        """Check ``config`` and remember its rules; relative paths are relative to ``base_dir``.

        Raises:
            ValueError: a key that is neither "" nor a path starting with "/", two keys for the
                same URL, a malformed value, or a file or folder that does not exist.
        """
        # Absolute now, so a later os.chdir() cannot move the served folders.
        base = os.path.abspath(os.fspath(base_dir))
        self._index_name = DEFAULT_INDEX
        self._index_type: str | None = None
        rules: dict[tuple[str, ...], _Rule] = {}
        for key, value in config.items():
            if key == "":
                self._index_name, self._index_type = _index_setting(value)
                continue
            segments = _key_segments(key)
            if segments in rules:
                raise ValueError(f"static_files: {key!r} names the same URL as another key")
            filename, content_type = _rule_value(key, value)
            path = os.path.join(base, filename)
            if os.path.isdir(path):
                is_dir = True
            elif os.path.isfile(path):
                is_dir = False
            elif os.path.exists(path):
                raise ValueError(f"static_files: {key!r} -> {path!r} is neither a file nor a folder")
            else:
                raise ValueError(f"static_files: {key!r} -> {path!r} does not exist")
            rules[segments] = _Rule(segments, path, is_dir, content_type)
        # Longest prefix first, so the first rule that matches is the most specific one.
        self._rules = sorted(rules.values(), key=lambda rule: len(rule.segments), reverse=True)

    def serves(self, url_path: str) -> bool:
        """Tell whether some rule covers ``url_path`` (i.e. :meth:`respond` would not return None)."""
        parsed = _parse_target(url_path)
        return parsed is not None and self._match(parsed[0]) is not None

    def respond(self, method: str, target: str, headers: Headers) -> StaticResponse | None:
        """Answer a request for the raw request ``target`` (its query is ignored).

        Returns None when no rule covers the path, so the server can answer it some other way;
        otherwise the response: 200, 304, 404 (for everything refused, whatever the reason) or
        405 for a method other than GET and HEAD.
        """
        parsed = _parse_target(target)
        if parsed is None:
            return None
        segments, trailing_slash = parsed
        rule = self._match(segments)
        if rule is None:
            return None
        if method not in ALLOWED_METHODS:
            allow = ", ".join(ALLOWED_METHODS)
            return StaticResponse(HTTPStatus.METHOD_NOT_ALLOWED, [("Allow", allow), ("Content-Length", "0")], b"")
        head = method == "HEAD"
        found = self._locate(rule, segments[len(rule.segments) :], trailing_slash)
        if found is None:
            return _not_found(head)
        filename, content_type, nofollow = found
        try:
            return _serve_file(filename, content_type, nofollow, head, headers)
        except (OSError, ValueError):
            # Vanished, unreadable, not a regular file, a name the OS rejects: all look the same.
            return _not_found(head)

    def _match(self, segments: tuple[str | None, ...]) -> _Rule | None:
        """Find the most specific rule for a request's decoded segments."""
        for rule in self._rules:
            if rule.is_dir:
                if segments[: len(rule.segments)] == rule.segments:
                    return rule
            elif segments == rule.segments:
                # A file rule covers its own URL only; what lies below it belongs to shorter rules.
                return rule
        return None

    def _locate(
        self, rule: _Rule, rest: tuple[str | None, ...], trailing_slash: bool
    ) -> tuple[str, str | None, bool] | None:
        """Map the path under a rule to (file to open, explicit content type, refuse symlinks) or None."""
        if not rule.is_dir:
            # The operator named this file, so a symlink there is deliberate: follow it.
            return rule.path, rule.content_type, False
        names: list[str] = []
        for segment in rest:
            if segment is None:  # refused by _decode_segment: "..", "%2f", "\\", NUL, ...
                return None
            names.append(segment)
        content_type = rule.content_type
        if not names or trailing_slash:
            # python-engineio: a folder URL ("/assets", "/assets/", "/assets/sub/") serves its index.
            names.append(self._index_name)
            content_type = content_type or self._index_type
        try:
            root = os.path.realpath(rule.path)
            candidate = os.path.realpath(os.path.join(root, *names))
            # commonpath, not startswith: "/srv/public-secret" starts with "/srv/public".
            inside = os.path.commonpath([root, candidate]) == root
        except (OSError, ValueError):  # a symlink loop, an embedded NUL, different drives on Windows
            return None
        if not inside or candidate == root:
            return None
        return candidate, content_type, True


def _index_setting(value: str | Mapping[str, str]) -> tuple[str, str | None]:
    """Validate the "" key: the file name a folder URL serves, optionally with its content type."""
    name, content_type = _rule_value("", value)
    if name in (".", "..") or any(char in name for char in "/\\\0"):
        raise ValueError(f"static_files: the '' key must be a plain file name like 'index.html', not {name!r}")
    return name, content_type


def _key_segments(key: object) -> tuple[str, ...]:
    """Split a URL key ("/assets", "/assets/", "/") into its segments, rejecting malformed keys."""
    if not isinstance(key, str) or not key.startswith("/"):
        raise ValueError(f"static_files: keys must be URL paths starting with '/' (or ''), not {key!r}")
    if any(char in key for char in "?#\\\0"):
        raise ValueError(f"static_files: {key!r} must be a plain URL path (no '?', '#', '\\' or NUL)")
    # "/assets/" and "/assets" are the same rule, as in python-engineio.
    trimmed = key[1:].rstrip("/")
    segments = tuple(trimmed.split("/")) if trimmed else ()
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(f"static_files: {key!r} has an empty, '.' or '..' segment")
    return segments


def _rule_value(key: str, value: object) -> tuple[str, str | None]:
    """Read a rule's value: a path, or ``{"filename": path, "content_type": type}``."""
    if isinstance(value, str | os.PathLike):
        if not os.fspath(value):
            raise ValueError(f"static_files: {key!r} maps to an empty path (use '.' for base_dir itself)")
        return os.fspath(value), None
    if isinstance(value, Mapping):
        unknown = set(value) - {"filename", "content_type"}
        if unknown:
            raise ValueError(f"static_files: {key!r} has unknown keys {sorted(unknown)!r}")
        filename = value.get("filename")
        content_type = value.get("content_type")
        if not isinstance(filename, str | os.PathLike) or not os.fspath(filename):
            raise ValueError(f"static_files: {key!r} needs a 'filename'")
        if content_type is not None and (not isinstance(content_type, str) or not content_type.strip()):
            raise ValueError(f"static_files: {key!r} has an empty or non-string 'content_type'")
        return os.fspath(filename), content_type
    raise ValueError(f"static_files: {key!r} must map to a path or a {{'filename': ...}} dict, not {value!r}")


def _parse_target(target: str) -> tuple[tuple[str | None, ...], bool] | None:
    """Split a request target into decoded path segments (None for an unsafe one) and a trailing-slash flag.

    Returns None for a target that is not a path at all ("*", "", a non-HTTP URL).
    """
    if _ABSOLUTE_FORM.match(target):
        path = urlsplit(target).path or "/"
    elif target.startswith("/"):
        # Not urlsplit: it would read "//etc/passwd" as host "etc" and path "/passwd".
        path = target.split("?", 1)[0].split("#", 1)[0]
    else:
        return None
    # Split on the raw "/" first, decode after: an encoded "%2f" stays inside its segment, where
    # _decode_segment sees it as a "/" and refuses the segment.
    raw = path[1:].split("/")
    trailing_slash = raw[-1] == ""
    if trailing_slash:
        raw.pop()
    return tuple(_decode_segment(segment) for segment in raw), trailing_slash


def _decode_segment(raw: str) -> str | None:
    """Percent-decode one path segment exactly once; None when it could escape or mislead."""
    # websockets guarantees ASCII targets, but this module may get one from elsewhere; control
    # characters and non-ASCII are never part of a valid request target.
    if not raw or not raw.isascii() or not raw.isprintable():
        return None  # an empty segment is "//": an absolute path smuggled in
    try:
        segment = unquote(raw, errors="strict")  # overlong or invalid UTF-8 is refused, not replaced
    except UnicodeDecodeError:
        return None
    if (
        segment.startswith(".")  # "..", ".", and dotfiles such as .env or .git
        or any(char in segment for char in "/\\\0:")  # separators, NUL, drive letters and NTFS streams
        or not segment.isprintable()
        or _ENCODED_LEFTOVER.search(segment)
    ):
        return None
    return segment


def _serve_file(
    filename: str, content_type: str | None, nofollow: bool, head: bool, request_headers: Headers
) -> StaticResponse:
    """Answer 200 or 304 for a regular file; raise OSError for anything else."""
    # stat before open: opening a device node or a FIFO can block or have side effects.
    if not stat.S_ISREG(os.stat(filename).st_mode):
        raise IsADirectoryError(filename)  # or a FIFO, socket, device: all "not found"
    fd = os.open(filename, _OPEN_FLAGS | (_NOFOLLOW if nofollow else 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped between the stat and the open
            raise IsADirectoryError(filename)
        etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
        modified = info.st_mtime_ns // 1_000_000_000  # HTTP dates have whole seconds
        validators = [
            ("Last-Modified", formatdate(modified, usegmt=True)),
            ("ETag", etag),
            ("Cache-Control", "no-cache"),  # cache it, but revalidate every time: files change in development
        ]
        if _not_modified(request_headers, etag, modified):
            return StaticResponse(HTTPStatus.NOT_MODIFIED, validators, b"")
        if head:
            length = info.st_size
            body = b""
        else:
            with open(fd, "rb", closefd=False) as file:
                body = file.read()
            length = len(body)  # what is sent, even if the file grew since the fstat
    finally:
        os.close(fd)
    headers = [
        ("Content-Type", content_type or _content_type(filename)),
        ("Content-Length", str(length)),
        *validators,
        ("X-Content-Type-Options", "nosniff"),
    ]
    return StaticResponse(HTTPStatus.OK, headers, body)


def _not_modified(headers: Headers, etag: str, modified: int) -> bool:
    """Evaluate If-None-Match, or else If-Modified-Since (RFC 9110 section 13.2.2)."""
    if_none_match = headers.get_all("If-None-Match")
    if if_none_match:
        # When If-None-Match is present, If-Modified-Since is ignored, even if it would match.
        value = ",".join(if_none_match).strip()
        if value == "*":
            return True
        # Weak comparison, as RFC 9110 requires for If-None-Match: W/"x" matches "x".
        return any(tag.removeprefix("W/") == etag for tag in _ENTITY_TAG.findall(value))
    if_modified_since = headers.get_all("If-Modified-Since")
    if len(if_modified_since) != 1:  # absent, or several values: ignored (RFC 9110 section 13.1.3)
        return False
    try:
        since = parsedate_to_datetime(if_modified_since[0])
    except (TypeError, ValueError, IndexError, OverflowError):
        return False  # a malformed date is ignored, not an error
    if since.tzinfo is None:  # asctime and "-0000" dates carry no zone; HTTP dates are GMT
        since = since.replace(tzinfo=UTC)
    return modified <= since.timestamp()


def _content_type(filename: str) -> str:
    """Guess a file's Content-Type from its extension, with a UTF-8 charset for text."""
    suffix = os.path.splitext(filename)[1].lower()
    content_type = (
        _CONTENT_TYPES.get(suffix)
        or _BUILTIN_TYPES.types_map[True].get(suffix)
        or _BUILTIN_TYPES.types_map[False].get(suffix)
        or _FALLBACK_TYPE
    )
    if content_type.startswith("text/"):
        # Without a charset a browser guesses (often windows-1252); an app's files are UTF-8.
        content_type += "; charset=utf-8"
    return content_type


def _not_found(head: bool) -> StaticResponse:
    """Answer 404 without saying why: a missing file and a refused path must look alike."""
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(_NOT_FOUND_BODY))),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    return StaticResponse(HTTPStatus.NOT_FOUND, headers, b"" if head else _NOT_FOUND_BODY)
