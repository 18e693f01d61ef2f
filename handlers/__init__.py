"""Built-in job types, one module each. They register on import (see `taskapp.registry.load_handlers`)."""
