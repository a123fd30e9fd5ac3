"""The PySide6 desktop app (installed as restorer_ui); depends on restorer/, never the reverse."""
