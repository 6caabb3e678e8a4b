"""The demo: a loopback simulator of real public API shapes, with scriptable faults."""
