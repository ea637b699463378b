"""Route templates: a path fills `/studies/{study}` segment by segment, and is routed and labelled by it."""

from __future__ import annotations

from shared.route_templates import path_values, route_of

ROUTES = ["/studies", "/studies/{study}", "/"]


def test_a_path_fills_a_template_one_segment_per_name() -> None:
    assert path_values("/studies/{study}", "/studies/1.2.3") == {"study": "1.2.3"}
    assert path_values("/studies/{study}", "/studies/1.2.3/") == {"study": "1.2.3"}
    assert path_values("/studies/{study}", "/studies") is None
    assert path_values("/studies/{study}", "/studies/1.2.3/series/4") is None
    assert path_values("/studies/{study}", "/other/1.2.3") is None


def test_route_of_prefers_the_exact_route_then_the_template_else_the_path() -> None:
    assert route_of("/studies", ROUTES) == "/studies"
    assert route_of("/studies/1.2.840.1", ROUTES) == "/studies/{study}"
    assert route_of("/nope/1.2", ROUTES) == "/nope/1.2"
    assert route_of("/", ROUTES) == "/"
