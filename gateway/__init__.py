"""gateway: configuration, routing, spool and journal, executors, forwarder, quarantine, metrics,
logging, the command line, start-up and graceful shutdown."""

__version__ = "0.1.0"
