"""The operator's console (``/ui``): its sign-in rules, what its pages show, and its templates
and static files (package data). The router is ``worker/ingress/console.py``."""
