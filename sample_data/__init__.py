"""Demo flows, reference tables and simulator scenarios (package data, read with
importlib.resources so an installed wheel carries them)."""
