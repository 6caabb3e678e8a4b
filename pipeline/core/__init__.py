"""Below the data path: the injected clock, the event hub, the duration grammar."""
