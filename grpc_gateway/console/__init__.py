"""The web console: server-rendered pages on the gateway's HTTP port, under /console (`pages`)."""
