"""The Textual console: one screen per concern, live from an engine through a Control.

Updates are batched: the engine's events are buffered and applied, and the
current screen redrawn, at most ten times a second whatever the ingest rate;
snapshots are pulled at the refresh interval (``+``/``-`` change it, ``p``
pauses). The app only ever sees the ``Control`` interface, so an in-process
engine and a remote daemon show the same screens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tomllib
from collections import deque
from importlib.resources import files
from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.theme import Theme

from flowdeck.console.state import ConsoleState
from flowdeck.console.widgets import ConfirmScreen
from flowdeck.pipeline.core.clock import Clock, SystemClock

# The wheel carries the themes as the package flowdeck.themes (a folder on disk once installed)
# and the console's stylesheets as package data of flowdeck.console.
THEMES_DIR = Path(str(files("flowdeck.themes")))
STYLES_DIR = Path(str(files("flowdeck.console").joinpath("styles")))
THEME_NAMES = {"dark": "flowdeck-dark", "light": "flowdeck-light",
               "high-contrast": "flowdeck-high-contrast"}
REFRESH_STEPS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
MAX_REPAINT_HZ = 10


GC_THRESHOLDS = (10_000, 20, 100)  # young, middle, old (CPython's default: 700, 10, 10)


def tune_gc() -> None:
    """Keep the collector's pauses short while the console draws.

    What exists once the screens are built (modules, screens, widgets, styles) lives as
    long as the app: frozen, no collection walks it again. Drawing leaves reference
    cycles behind (Textual's strips cache themselves), most of them dead within a second
    or two; with larger young generations they die there, in collections of a few ms,
    instead of reaching the old generation, whose full collections took 60-100 ms
    several times a minute and were the slowest key-to-repaints (measured with gc
    callbacks around bench/bench_console.py at 10,000 records/s)."""
    gc.collect()  # garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def load_themes() -> list[Theme]:
    themes = []
    for path in sorted(THEMES_DIR.glob("*.toml")):
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        themes.append(Theme(**data))
    return themes


# mode -> (key, title): the screens in the order of their keys. Each key is the binding
# ``screen.<mode>``, rebindable from ``console.keys`` like every other binding.
SCREEN_KEYS = {
    "overview": ("1", "Overview"), "sources": ("2", "Sources"), "quality": ("3", "Quality"),
    "caches": ("4", "Caches"), "recovery": ("5", "Recovery"), "data": ("6", "Data"),
    "insights": ("7", "Insights"), "events": ("8", "Events"),
}

# The stylesheets, in the order they are read (a later rule wins a tie): the shared widgets
# and dialogs, the app-wide layout (themes/flowdeck.tcss, which may override a widget's
# own sizes), then one per screen. Every selector names its widget or screen type first,
# so a screen's rules apply on that screen only.
STYLESHEETS = [
    STYLES_DIR / "widgets.tcss", STYLES_DIR / "confirm.tcss", STYLES_DIR / "screen_menu.tcss",
    THEMES_DIR / "flowdeck.tcss",
    *(STYLES_DIR / f"{name}.tcss" for name in (
        "caches", "data", "events", "help", "insights", "issue", "lineage", "quality", "raw",
        "recovery")),
]


def _screens() -> dict[str, tuple[str, str, Any]]:
    """mode -> (key, title, screen class). Imported late to keep start-up light."""
    from flowdeck.console.screens.caches import CachesScreen
    from flowdeck.console.screens.data import DataScreen
    from flowdeck.console.screens.events import EventsScreen
    from flowdeck.console.screens.insights import InsightsScreen
    from flowdeck.console.screens.overview import OverviewScreen
    from flowdeck.console.screens.quality import QualityScreen
    from flowdeck.console.screens.recovery import RecoveryScreen
    from flowdeck.console.screens.sources import SourcesScreen

    classes = {"overview": OverviewScreen, "sources": SourcesScreen, "quality": QualityScreen,
               "caches": CachesScreen, "recovery": RecoveryScreen, "data": DataScreen,
               "insights": InsightsScreen, "events": EventsScreen}
    return {mode: (key, title, classes[mode]) for mode, (key, title) in SCREEN_KEYS.items()}


class FlowdeckApp(App):
    TITLE = "flowdeck"
    CSS_PATH = [str(path) for path in STYLESHEETS]
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("p", "toggle_pause", "Pause", id="app.pause"),
        Binding("plus,equals_sign", "faster", "Faster", show=False, id="app.faster"),
        Binding("minus", "slower", "Slower", show=False, id="app.slower"),
        Binding("t", "next_theme", "Theme", show=False, id="app.theme"),
        Binding("escape", "back", "Back", show=False, id="app.back"),
        Binding("q", "quit", "Quit", id="app.quit"),
        *(Binding(key, f"switch_mode('{mode}')", title, show=False, id=f"screen.{mode}")
          for mode, (key, title) in SCREEN_KEYS.items()),
        # Textual's own palette binding has no id; this one (which it then does not add)
        # is the same with an id, so it can be rebound too.
        Binding(App.COMMAND_PALETTE_BINDING, "command_palette", "palette", show=False,
                key_display=App.COMMAND_PALETTE_DISPLAY, priority=True,
                tooltip="Open the command palette", id="app.palette"),
    ]

    def __init__(self, control=None, *, state: ConsoleState | None = None,
                 clock: Clock | None = None, theme: str = "dark", refresh: float = 1.0,
                 keymap: dict[str, str] | None = None, engine=None) -> None:
        self.screen_specs = _screens()
        self.MODES = {mode: cls for mode, (_, _, cls) in self.screen_specs.items()}
        super().__init__()
        self.control = control
        self.engine = engine  # an in-process engine this app starts and stops
        self.state = state or ConsoleState()
        self.state.refresh_s = refresh
        self.clock = clock or SystemClock()
        self._theme_name = THEME_NAMES.get(theme, theme)
        self.key_config = dict(keymap or {})  # console.keys: binding id -> key(s)
        self._buffer: deque[dict] = deque(maxlen=20_000)
        self._dirty = False
        self._tasks: list[asyncio.Task] = []
        self._snapshot_now = asyncio.Event()
        self.repaints = 0  # counted for the responsiveness benchmark

    # ------------------------------------------------------------ lifecycle

    async def on_mount(self) -> None:
        for theme in load_themes():
            self.register_theme(theme)
        self.theme = self._theme_name if self._theme_name in self.available_themes \
            else "flowdeck-dark"
        if self.key_config:
            from flowdeck.console.screens.help import binding_ids

            self.set_keymap(self.key_config)
            unknown = sorted(set(self.key_config) - binding_ids(type(self)))
            if unknown:
                self.notify(f"console.keys: no binding with id {', '.join(unknown)}",
                            severity="warning")
        # Every screen is built now, while the engine starts, and Overview shown last:
        # the first visit of a screen then costs what any visit costs (building one,
        # its CSS parsed into the stylesheet, took up to seconds on a busy machine).
        with self.batch_update():
            for mode in reversed(list(self.screen_specs)):
                await self.switch_mode(mode)
        tune_gc()
        self.set_interval(1 / MAX_REPAINT_HZ, self._apply_updates)
        if self.control is not None:
            self._tasks.append(asyncio.create_task(self._run_live()))

    async def _run_live(self) -> None:
        if self.engine is not None and not self.engine.started:
            self.state.connection = "starting engine…"
            self._dirty = True
            try:
                await self.engine.start()
            except Exception as exc:  # shown in the header; q still quits
                self.state.connected = False
                self.state.connection = f"error: {exc}"
                self._dirty = True
                return
        sub = self.control.subscribe()
        self._tasks.append(asyncio.create_task(self._pump(sub)))
        while True:
            self._snapshot_now.clear()
            if not self.state.paused:
                try:
                    snap = await self.control.snapshot(latest=self._latest_wanted())
                    self.state.update(snap, self.clock.now())
                    self.state.connected = True
                except Exception as exc:  # a lost connection shows in the header
                    self.state.connected = False
                    self.state.connection = f"error: {exc}"
                self._dirty = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._snapshot_now.wait(), self.state.refresh_s)

    def _latest_wanted(self) -> list[str] | None:
        """Whose latest values the next snapshot should carry: only the Data screen shows
        them, one flow at a time (None, all of them, while it has not chosen one yet)."""
        if self.current_mode != "data" or "data" not in self._screen_stacks:
            return []
        flow = self._screen_stacks["data"][0]._ensure_flow()
        return [flow] if flow else None

    def request_snapshot(self) -> None:
        """Fetch a snapshot now rather than at the next refresh (a screen needs more)."""
        self._snapshot_now.set()

    async def _pump(self, sub) -> None:
        while True:
            ev = await sub.get()
            self._buffer.append(ev.as_dict() if hasattr(ev, "as_dict") else ev)

    def _apply_updates(self) -> None:
        """At most ten times a second: apply buffered events, redraw the current screen."""
        if not self.state.paused:
            if self._buffer:
                self.state.add_events(list(self._buffer))
                self._buffer.clear()
                self._dirty = True
            if self.control is not None:
                self.state.now = self.clock.now()
        if self._dirty:
            self._dirty = False
            self.redraw()

    def redraw(self) -> None:
        # Starting, or shutting down: Textual clears the running flag before it unmounts
        # the screens, children first, while this app's timers may still fire, so a
        # screen can be mounted with its widgets already gone (seen once in CI, under
        # load, as NoMatches on the Caches screen when a test's app exited).
        if not self.screen_stack or not self.is_running:
            return
        screen = self.screen
        if getattr(screen, "resuming", False):
            self._dirty = True  # the screen redraws itself in a moment; this one waits
            return
        if hasattr(screen, "refresh_view") and screen.is_mounted:
            screen.refresh_view()
            self.repaints += 1

    async def on_unmount(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.engine is not None and (self.engine.started
                                        or getattr(self.engine, "spawned", False)):
            await self.engine.stop()

    # ------------------------------------------------------------ screen switching

    _switching = False

    def switch_mode(self, mode: str):
        """Switch screens without Textual's 50 ms hold on frames.

        Textual's ``switch_mode`` calls ``delay_update()``: nothing is drawn for 50 ms, to
        mask a screen being built. Every screen here is built at start-up (``on_mount``),
        so there is nothing to mask, and the hold was over half of every key-to-repaint."""
        self._switching = True
        try:
            return super().switch_mode(mode)
        finally:
            self._switching = False
            if mode == "data":
                # Its latest values, fetched once the switch has been drawn: decoding a
                # flow of thousands of keys must not delay the key's repaint.
                self.call_after_refresh(self.request_snapshot)

    def delay_update(self, delay: float = 0.05) -> None:
        if not self._switching:
            super().delay_update(delay)

    # ------------------------------------------------------------ actions

    def action_toggle_pause(self) -> None:
        self.state.paused = not self.state.paused
        self.notify("live updates paused (p resumes)" if self.state.paused
                    else "live updates resumed")
        self.redraw()

    def _step_refresh(self, direction: int) -> None:
        cur = self.state.refresh_s
        steps = list(REFRESH_STEPS)
        i = min(range(len(steps)), key=lambda k: abs(steps[k] - cur))
        i = max(0, min(len(steps) - 1, i + direction))
        self.state.refresh_s = steps[i]
        self.notify(f"refresh every {steps[i]:g}s")
        self.redraw()

    def action_faster(self) -> None:
        self._step_refresh(-1)

    def action_slower(self) -> None:
        self._step_refresh(+1)

    def action_next_theme(self) -> None:
        names = list(THEME_NAMES.values())
        i = names.index(self.theme) + 1 if self.theme in names else 0
        self.theme = names[i % len(names)]
        self.notify(f"theme {self.theme}")
        self.redraw()

    def action_screen_menu(self) -> None:
        """The screens as a menu (clicking the screen's name in the header opens it)."""
        from flowdeck.console.widgets import ScreenMenu

        if isinstance(self.screen, ScreenMenu):
            return

        def chosen(mode: str | None) -> None:
            if mode:
                self.call_later(self.switch_mode, mode)

        self.push_screen(ScreenMenu([(m, self.key_of(f"screen.{m}"), t)
                                     for m, (_k, t, _c) in self.screen_specs.items()],
                                    self.current_mode), chosen)

    def key_of(self, binding_id: str) -> str:
        """The key of one of the app's bindings as shown, ``console.keys`` applied."""
        from flowdeck.console.screens.help import key_display

        return key_display(self, next(b for b in self.BINDINGS if b.id == binding_id))

    def action_help(self) -> None:
        from flowdeck.console.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    async def action_back(self) -> None:
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.current_mode != "overview":
            await self.switch_mode("overview")

    def get_system_commands(self, screen):
        from textual.app import SystemCommand

        yield from super().get_system_commands(screen)
        for mode, (_key, title, _cls) in self.screen_specs.items():
            yield SystemCommand(f"Go to {title}",
                                f"Show the {title} screen (key {self.key_of('screen.' + mode)})",
                                lambda m=mode: self.switch_mode(m))
        yield SystemCommand("Pause / resume live updates", f"Key {self.key_of('app.pause')}",
                            self.action_toggle_pause)
        yield SystemCommand("Next theme",
                            f"Dark, light, high contrast (key {self.key_of('app.theme')})",
                            self.action_next_theme)
        yield SystemCommand("Help", f"Every key (key {self.key_of('app.help')})",
                            self.action_help)
        for flow in self.state.flows:
            yield SystemCommand(f"Run {flow} now", "Fetch and process once",
                                lambda f=flow: self.operator_action("run_now", flow=f))
            yield SystemCommand(f"Replay quarantine of {flow}",
                                "Re-run quarantined payloads through the current pipeline",
                                lambda f=flow: self.operator_action(
                                    "replay_quarantine", flow=f,
                                    confirm=f"Replay the quarantine of {f}?"))
        yield from self._cache_commands()

    def _cache_commands(self):
        from textual.app import SystemCommand

        from flowdeck.console.screens.caches import layer_name

        layers = self.state.caches()["layers"]
        if not layers:
            return
        for flow in self.state.flows:
            yield SystemCommand(f"Pre-warm caches of {flow}", "Load its hot keys into the caches",
                                lambda f=flow: self.operator_action("prewarm", flow=f))
            yield SystemCommand(f"Purge caches of {flow}", "Every key of the flow, every layer",
                                lambda f=flow: self.operator_action(
                                    "purge_cache", flow=f, key=None, layer=None,
                                    confirm=f"Purge every cached key of {f} from every layer?"))
        for layer, info in layers.items():
            if info.get("enabled"):
                name = layer_name(layer, info)
                yield SystemCommand(f"Purge cache layer {name}", "Every key in this layer",
                                    lambda lay=layer, n=name: self.operator_action(
                                        "purge_cache", flow=None, key=None, layer=lay,
                                        confirm=f"Purge every key from {n}?"))
        for hot in self.state.caches()["hot_keys"][:10]:
            f, k = hot.get("flow"), hot.get("key")
            yield SystemCommand(f"Purge cache key {f}/{k}", "Hot key, every layer",
                                lambda f=f, k=k: self.operator_action(
                                    "purge_cache", flow=f, key=k, layer=None,
                                    confirm=f"Purge {f}/{k} from every cache layer?"))

    def operator_action(self, name: str, *, confirm: str | None = None, **params) -> None:
        """Run an operator action through the control, after confirmation if asked; toast it."""
        if self.control is None:
            self.notify("not connected to an engine", severity="error")
            return

        async def go() -> None:
            try:
                result = await self.control.act(name, **params)
            except Exception as exc:
                self.notify(f"{name} failed: {exc}", severity="error")
                return
            self.notify(result.get("message", name),
                        severity="information" if result.get("ok") else "error")
            try:
                self.state.update(await self.control.snapshot(), self.clock.now())
            except Exception:
                pass
            self.redraw()

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(go(), exclusive=False)

        if confirm:
            self.push_screen(ConfirmScreen(confirm), answered)
        else:
            self.run_worker(go(), exclusive=False)
