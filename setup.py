"""One build step beyond pyproject.toml (which holds everything else).

The repository keeps the example dataset, the logo and the built-in presets in its top-level
``assets/`` and ``presets/`` folders, where people find and edit them. A wheel installs only
packages, so this step copies them into the package being built, as
``lora_gui/_bundled/assets/example/...``, ``lora_gui/_bundled/assets/logo.svg`` and
``lora_gui/_bundled/presets/*.json`` (the same relative paths), where ``lora_gui.data.bundled``
finds them after ``pip install``. Nothing is copied in the source tree itself: an editable
install and a checkout read the top-level folders. MANIFEST.in puts the same files in the sdist,
so a wheel built from the sdist has them too.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("assets/example", "assets/logo.svg", "presets")   # keep MANIFEST.in in step
TARGET = ("lora_gui", "_bundled")


def bundled_files() -> list[Path]:
    files = []
    for rel in BUNDLED:
        src = ROOT / rel
        files += [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    return files


class BuildPyWithBundled(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):   # an editable install reads the checkout's folders
            return
        for f in bundled_files():
            dest = Path(self.build_lib, *TARGET, f.relative_to(ROOT))
            self.mkpath(str(dest.parent))
            self.copy_file(str(f), str(dest))

    def get_outputs(self, include_bytecode=True):
        extra = [] if getattr(self, "editable_mode", False) else \
            [str(Path(self.build_lib, *TARGET, f.relative_to(ROOT))) for f in bundled_files()]
        return super().get_outputs(include_bytecode) + extra


setup(cmdclass={"build_py": BuildPyWithBundled})
