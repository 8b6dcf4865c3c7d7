"""Hotdog Lab: the d2l.ai *Fine-Tuning* chapter as an importable, UI-free engine.

Nothing in this package imports streamlit; the app in ``pages/`` is a thin UI over it.
"""

__version__ = "0.1.0"
