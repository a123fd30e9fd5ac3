"""The PySide6 desktop app; depends on restorer/, never the reverse."""
