"""Export recipes, one JSON file per deployment target class; installed as ``farl_edge.recipes``."""
