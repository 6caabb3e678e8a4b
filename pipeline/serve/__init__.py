"""Serving: the control protocol, the websocket feed, the HTTP API, /metrics, the viewer
page and the lineage/export queries. The top of the pipeline layer."""
