"""Helpers the tests share: rigs for the feed and daemons, console fixtures, recovery
configs, plus the data they read (corpus/, configs/, fixtures/)."""
