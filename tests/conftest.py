import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


import gc  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def collect_garbage_on_the_main_thread(request):
    """As the app does (restorer_ui.gc_guard): no automatic collection while a test that uses
    Qt runs (a worker thread crossing a threshold would free Qt objects off the GUI thread and
    crash), one full collection on this thread after it."""
    if "qtbot" not in request.fixturenames and "restorer_ui" not in sys.modules:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.enable()
