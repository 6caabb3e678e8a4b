"""The console's link to an engine it does not run in-process: the remote control over
the feed and the launcher of a child daemon."""
