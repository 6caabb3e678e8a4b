"""Console stylesheets and colour themes (package data, read with importlib.resources)."""
