"""Reading data: file formats, data sources (shared data, packages, hub), task splits and budgets."""
