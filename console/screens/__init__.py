"""The console's screens: base.py holds what they share, one module per screen."""
