"""Built-in transports; each module is imported lazily by pluq.registry."""
