"""The Textual console (see console/app.py). Importing it installs the one fix to
Textual's drawing it relies on (console/textual_fixes.py)."""

from flowdeck.console import textual_fixes

textual_fixes.apply()
