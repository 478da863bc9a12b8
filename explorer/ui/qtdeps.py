"""Which system libraries Qt's X11 (xcb) platform plugin still needs, and the Debian packages that
provide them.

PySide6's wheels carry Qt but not the X11 helper libraries its xcb plugin links against
(``libxcb-icccm.so.4``, ``libxcb-keysyms.so.1``...) nor ``libxcb-cursor.so.0``, which Qt 6.5+
loads at start-up. Without them the window aborts with a long Qt message. This module finds
what is missing with ``ldd`` on the plugin (plus a look-up of ``libxcb-cursor``), so that

- ``scripts/bootstrap.sh --gui`` (``./run.sh``) installs the packages when it runs as root, or
  prints the exact ``apt-get`` command;
- ``explorer gui`` / ``main.py`` stop with one clear line instead of Qt's abort.

It does not import Qt (it only locates the installed PySide6 package), so it is safe to run
before a window could open. ``python -m explorer.ui.qtdeps`` prints the missing packages, one
line, empty when nothing is missing or the window would not use xcb.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: sonames whose Debian package name does not follow from the soname
PACKAGES = {
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
}
#: loaded with dlopen by Qt >= 6.5, so ldd cannot see it
DLOPENED = ("libxcb-cursor.so.0",)


def debian_package(soname: str) -> str:
    """The Debian package that provides ``soname`` (``libxcb-shape.so.0`` -> ``libxcb-shape0``)."""
    if soname in PACKAGES:
        return PACKAGES[soname]
    m = re.match(r"^(lib.+?)\.so\.(\d+)", soname)
    if not m:
        return soname
    base, ver = m.group(1).lower(), m.group(2)
    return f"{base}-{ver}" if base[-1].isdigit() else f"{base}{ver}"


def xcb_plugin() -> Path | None:
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return p if p.is_file() else None


def uses_xcb(env=os.environ) -> bool:
    """Would a window started with this environment use the xcb plugin (X11)?"""
    plat = env.get("QT_QPA_PLATFORM", "").split(":")[0].split(";")[0]
    if plat:
        return plat == "xcb"
    if env.get("XDG_SESSION_TYPE") == "wayland" and env.get("WAYLAND_DISPLAY"):
        return False
    return sys.platform.startswith("linux")


def missing_libraries() -> list[str]:
    """Sonames the xcb plugin needs that this system lacks (empty when the plugin or ldd is absent)."""
    plugin = xcb_plugin()
    if plugin is None or shutil.which("ldd") is None:
        return []
    try:
        out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    missing = [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]
    for soname in DLOPENED:
        name = soname.split(".so")[0][3:]  # libxcb-cursor.so.0 -> xcb-cursor
        if ctypes.util.find_library(name) is None:
            missing.append(soname)
    return list(dict.fromkeys(missing))


def missing_packages() -> list[str]:
    """The Debian packages to install so that the window can open (empty when nothing is missing)."""
    if not uses_xcb():
        return []
    return list(dict.fromkeys(debian_package(s) for s in missing_libraries()))


def install_command(packages: list[str]) -> str:
    return "sudo apt-get install -y " + " ".join(packages)


def problem() -> str | None:
    """One line saying what to install, or None when the window can open."""
    pkgs = missing_packages()
    if not pkgs:
        return None
    return (f"the window cannot open: Qt's X11 plugin needs system libraries that are missing "
            f"({', '.join(missing_libraries())}); install them with: {install_command(pkgs)}")


if __name__ == "__main__":
    print(" ".join(missing_packages()))
