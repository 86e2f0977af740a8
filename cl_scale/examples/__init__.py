"""Apps bundled with cl-scale (``cl-scale up`` with no APP serves ``demo_app.py``)."""
