"""Builds bloodcv._core with the project's CMake build (in build/, shared with scripts/setup.sh)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = Path(os.environ.get("BLOODCV_BUILD_DIR", ROOT / "build"))
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), f"-DPython_EXECUTABLE={sys.executable}"])
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "_core", "_ops", "-j", jobs])
        built = build_dir / "python" / "bloodcv"
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(next(built.glob("_core*.so")), target)
        shutil.copy2(built / "_ops.so", target.parent / "_ops.so")  # torch.ops.bloodcv, for bloodcv.assign


setup(
    ext_modules=[Extension("bloodcv._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": str(ROOT / "build" / "setuptools")}},  # beside the CMake tree, not in it
)
