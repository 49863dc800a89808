"""The whole recipe (``alad run``): recipe files, stages, rows, reports."""
