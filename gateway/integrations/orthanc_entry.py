"""Entry script for Orthanc's `PythonScript` setting (Debian package `orthanc-python`).

Orthanc runs this file with its own embedded Python (the libpython the plugin links: check with
`ldd /usr/share/orthanc/plugins/libOrthancPython.so`; Debian 12 links Python 3.11), so the
gateway's code and its dependencies must be importable by that Python. The `DeidGateway` section
of Orthanc's configuration says where they are and which gateway configuration to use::

    "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so"],
    "PythonScript": "/opt/deid-gateway/site-packages/gateway/integrations/orthanc_entry.py",
    "DeidGateway": {
      "Configuration": "/etc/deid-gateway/gateway.yaml",
      "PythonPath": ["/opt/deid-gateway/site-packages"]
    }

`deid-gateway orthanc-plugin snippet --config gateway.yaml`, run with the gateway's own Python
(a virtual environment made with Python 3.11), prints that section with the right paths.

Nothing here may import the gateway before `PythonPath` is on `sys.path`.
"""

import json
import site
import sys

import orthanc  # provided by Orthanc's Python plugin

_settings = json.loads(orthanc.GetConfiguration()).get("DeidGateway") or {}
if "Configuration" not in _settings:
    raise RuntimeError(
        'deid-gateway: Orthanc\'s configuration needs "DeidGateway": {"Configuration": '
        '"/path/to/gateway.yaml", "PythonPath": [...]}'
    )
# In front of the system's own packages (Debian's dist-packages), then the .pth files of each
# entry are processed as for a virtual environment's site-packages.
for _entry in reversed(_settings.get("PythonPath") or []):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)
for _entry in _settings.get("PythonPath") or []:
    site.addsitedir(_entry)

from gateway.integrations.orthanc_plugin import install  # noqa: E402

HANDOVER = install(orthanc, _settings["Configuration"])
