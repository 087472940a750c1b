"""Importing the kb plugin before Datasette still registers every hook."""

import subprocess
import sys

# Run in a fresh interpreter: the test process has long imported Datasette.
CHECK = """
import kb.datasette_plugin
from datasette.plugins import pm
import datasette.handle_exception
for hook in ("startup", "prepare_connection", "register_routes", "asgi_wrapper"):
    names = [impl.plugin_name for impl in getattr(pm.hook, hook).get_hookimpls()]
    print(hook, "kb" in names)
print("rich", datasette.handle_exception.rich)
"""


def test_plugin_imported_first_has_hooks():
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "startup True" in lines
    assert "prepare_connection True" in lines
    assert "register_routes True" in lines
    assert "asgi_wrapper True" in lines
    assert "rich None" in lines
