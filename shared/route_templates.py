"""Route templates: `/studies/{study}` stands for every path with one segment in place of each `{name}`.

`shared.http.serve` routes a request by the template its path fills and labels its metrics with the template, so
a value in a path (a DICOM StudyInstanceUID) never becomes a metric label; a handler reads the values with
`path_values`.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["path_values", "route_of"]


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/") if path.strip("/") else []


def path_values(template: str, path: str) -> dict[str, str] | None:
    """{name: segment} when `path` fills `template` (each `{name}` one non-empty segment), else None."""
    wanted, given = _segments(template), _segments(path)
    if len(wanted) != len(given):
        return None
    values: dict[str, str] = {}
    for pattern, segment in zip(wanted, given, strict=True):
        if pattern.startswith("{") and pattern.endswith("}"):
            if not segment:
                return None
            values[pattern[1:-1]] = segment
        elif pattern != segment:
            return None
    return values


def route_of(path: str, routes: Iterable[str]) -> str:
    """The route `path` is served by: itself when it is one of `routes`, else the first template it fills, else
    `path` unchanged (an unknown route)."""
    known = list(routes)
    if path in known:
        return path
    return next((route for route in known if "{" in route and path_values(route, path) is not None), path)
