"""The console's stylesheets: all of them read by the app, from the installed package."""

from __future__ import annotations

import importlib
import pkgutil

from textual.dom import DOMNode

from flowdeck.console.app import STYLES_DIR, STYLESHEETS, THEMES_DIR, FlowdeckApp


def test_every_stylesheet_is_read_and_the_classes_carry_no_css():
    assert set(STYLESHEETS) == set(STYLES_DIR.glob("*.tcss")) | {THEMES_DIR / "flowdeck.tcss"}
    assert all(path.is_file() for path in STYLESHEETS)
    assert FlowdeckApp.CSS_PATH == [str(path) for path in STYLESHEETS]
    # widgets.tcss comes before the app-wide layout, which may override a widget's sizes
    assert STYLESHEETS.index(STYLES_DIR / "widgets.tcss") \
        < STYLESHEETS.index(THEMES_DIR / "flowdeck.tcss")


def test_no_screen_or_widget_keeps_inline_css():
    from flowdeck.console import screens, widgets

    classes = []
    for package in (screens, widgets):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            classes += [obj for obj in vars(module).values() if isinstance(obj, type)
                        and issubclass(obj, DOMNode) and obj.__module__ == module.__name__]
    assert len(classes) >= 20
    for cls in classes:
        assert not cls.__dict__.get("CSS") and not cls.__dict__.get("DEFAULT_CSS"), cls
