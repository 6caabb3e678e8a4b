"""The engine: flow lifecycle and runs (engine.py, flow.py), failover and breakers
(failover.py, breakers.py), the store guard and its spool (guard.py, spool.py), the
deferred-series flusher (deferred.py), the scheduler (scheduler.py) and alerts
(alerts.py). It drives the data path and sits below the serving layer."""
