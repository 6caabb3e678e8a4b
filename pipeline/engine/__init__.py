"""The engine: flow lifecycle and runs, failover and breakers, the store guard and its
spool, deferred series, the scheduler and alerts. It drives the data path and sits
below the serving layer."""
