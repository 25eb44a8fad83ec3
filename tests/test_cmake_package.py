"""`cmake --install` of the C++ core gives a CMake package: another project's find_package(fastmlp)
and fastmlp::core build examples/xor.cpp against the installed tree alone, and it learns XOR."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cxx_compiler():
    names = [os.environ["CXX"].split()[0]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


pytestmark = [
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed"),
    pytest.mark.skipif(_cxx_compiler() is None, reason="no C++ compiler (c++, g++, clang++ or $CXX)"),
]

APP_CMAKELISTS = """\
cmake_minimum_required(VERSION 3.18)
project(fastmlp_consumer LANGUAGES CXX)
find_package(fastmlp 0.1 CONFIG REQUIRED)
message(STATUS "consumer: fastmlp ${fastmlp_VERSION} from ${fastmlp_DIR}")
add_executable(xor_app xor.cpp)
target_link_libraries(xor_app PRIVATE fastmlp::core)
"""


def _run(cmd, timeout, **kw):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_installed_core_is_a_cmake_package(tmp_path):
    build, staged, prefix, app = (tmp_path / n for n in ("core-build", "staged", "prefix", "app"))
    # The smallest core: no Python module, no CUDA, no example; Release as a user would install it.
    _run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DFASTMLP_PYTHON=OFF",
          "-DFASTMLP_CUDA=OFF", "-DFASTMLP_EXAMPLES=OFF", "-DCMAKE_INSTALL_LIBDIR=lib",
          f"-DPython_EXECUTABLE={sys.executable}"], timeout=120)
    _run(["cmake", "--build", build, "-j", "2"], timeout=600)
    _run(["cmake", "--install", build, "--prefix", staged], timeout=60)

    for rel in ("include/fastmlp/engine.h", "include/fastmlp/initializers.h", "include/fastmlp/random.h",
                "lib/cmake/fastmlp/fastmlpConfig.cmake", "lib/cmake/fastmlp/fastmlpConfigVersion.cmake",
                "lib/cmake/fastmlp/fastmlpTargets.cmake"):
        assert (staged / rel).is_file(), rel
    assert list((staged / "lib").glob("*fastmlp_core*")), sorted(p.name for p in (staged / "lib").iterdir())
    # Every header a public header includes is installed too.
    for header in (staged / "include/fastmlp").glob("*.h"):
        for inc in re.findall(r'#include\s+"([^"]+)"', header.read_text()):
            assert (staged / "include" / inc).is_file(), f"{header.name} includes {inc}, which is not installed"

    # The installed tree stands alone: relocate it and drop the build tree the package came from.
    shutil.move(str(staged), str(prefix))
    shutil.rmtree(build)

    app.mkdir()
    (app / "CMakeLists.txt").write_text(APP_CMAKELISTS)
    shutil.copy(ROOT / "examples" / "xor.cpp", app / "xor.cpp")
    conf = _run(["cmake", "-S", app, "-B", app / "build", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={prefix}", f"-DPython_EXECUTABLE={sys.executable}"], timeout=120)
    assert f"consumer: fastmlp 0.1.0 from {prefix}" in conf.stdout, conf.stdout
    _run(["cmake", "--build", app / "build", "-j", "2"], timeout=300)

    run = subprocess.run([str(app / "build" / "xor_app")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr  # xor.cpp exits 1 unless 4/4 and loss < 0.05
    assert "4/4 correct" in run.stdout, run.stdout
    loss = float(re.search(r"loss ([0-9.eE+-]+), 4/4 correct", run.stdout).group(1))
    assert loss < 0.05, run.stdout
    outputs = {tuple(map(float, m[:2])): float(m[2])
               for m in re.findall(r"xor\(([\d.]+), ([\d.]+)\) = ([\d.]+)", run.stdout)}
    assert outputs.keys() == {(0, 0), (0, 1), (1, 0), (1, 1)}, run.stdout
    for (a, b), out in outputs.items():
        assert abs(out - float(a != b)) < 0.2, run.stdout
